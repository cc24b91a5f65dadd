"""The CLI starts without the heavy libraries: a command imports them when it runs, so --help, a typo or
a listing answers at once. Checked by the modules a fresh interpreter imports, not by timing."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "pandas", "scipy", "nltk")


def imported_packages(*args: str) -> set[str]:
    """Top-level packages a fresh interpreter imports running ``python -X importtime *args``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=120
    )
    # Each line reads "import time: self | cumulative | <indent>module"; the header's last field is a title.
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines[1:]}


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "import babelheads.cli"),
        ("-m", "babelheads.cli", "--help"),
        ("-m", "babelheads.cli", "compress", "--help"),
        ("-m", "babelheads.cli", "rag", "--help"),
        ("-m", "babelheads.cli", "detcet"),
    ],
    ids=["import", "help", "compress-help", "rag-help", "typo"],
)
def test_cli_starts_without_heavy_libraries(args: tuple[str, ...]) -> None:
    packages = imported_packages(*args)
    assert "babelheads" in packages  # the parse found the imports at all
    assert not packages & set(HEAVY), f"{' '.join(args)} imports {sorted(packages & set(HEAVY))}"
