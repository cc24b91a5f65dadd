"""Every kind of run writes the same tables as before the experiment contract (tests/golden/).

The goldens were written by the code before the lifecycle moved into experiments/base.py; a change
that alters a number in any table of any kind fails here. Regenerate them only for a change that is
meant to alter results: ``python tests/contract_runs.py --write tests/golden``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from contract_runs import ANALYSIS_CHANGES, KINDS, run_every_kind, run_kind, tables

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    return run_every_kind(tiny_model_dir, tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("kind", KINDS)
def test_tables_equal_the_goldens(every_kind, kind):
    found = tables(every_kind[kind])
    expected = {path.stem.replace("__", "/"): pd.read_parquet(path) for path in (GOLDEN / kind).glob("*")}
    assert sorted(found) == sorted(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(found[name], frame, check_exact=False, rtol=1e-5, obj=f"{kind}/{name}")


def _intervals(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (estimate, lo, hi) column triples of a table: value/lo/hi (a claim's: estimate/lo/hi, the
    claims table's fixed columns), and <name>/<name>_lo/<name>_hi."""
    found = [("estimate" if "estimate" in frame else "value", "lo", "hi")] if "lo" in frame else []
    return found + [(c[:-3], c, f"{c[:-3]}_hi") for c in frame.columns if c.endswith("_lo")]


@pytest.mark.parametrize("kind", KINDS)
def test_every_interval_has_the_one_schema_and_contains_its_estimate(every_kind, kind):
    """value, lo, hi, n (or <name>, <name>_lo, <name>_hi beside one n); no low/high spellings; an
    interval contains its estimate; under two units there is no interval (NaN, never zero width)."""
    for name, frame in tables(every_kind[kind]).items():
        old = [c for c in frame.columns if c in ("low", "high") or c.endswith(("_low", "_high"))]
        assert not old, (name, old)
        for estimate, lo, hi in _intervals(frame):
            assert {estimate, hi} <= set(frame.columns), (name, estimate)
            assert "n" in frame, (name, "an interval without n")
            bounded = frame[frame[lo].notna()]
            assert (bounded[lo] <= bounded[estimate] + 1e-12).all(), (name, estimate)
            assert (bounded[estimate] <= bounded[hi] + 1e-12).all(), (name, estimate)
            assert frame.loc[frame["n"] < 2, [lo, hi]].isna().all().all(), (name, estimate)


@pytest.mark.parametrize("kind", list(ANALYSIS_CHANGES))
def test_an_analysis_setting_reanalyses_without_running_a_part(every_kind, tiny_model_dir, kind):
    root = every_kind[kind].parent
    parts = sorted((every_kind[kind] / "tables").glob("*/*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in parts]
    marker = every_kind[kind] / "finalized.json"
    before = marker.stat().st_mtime_ns
    run_kind(kind, tiny_model_dir, root, *ANALYSIS_CHANGES[kind])
    assert [path.stat().st_mtime_ns for path in parts] == stamps
    assert marker.stat().st_mtime_ns > before  # finalized again, with the new setting


@pytest.fixture(scope="module")
def sibling(tmp_path_factory, tiny_tokenizer_session) -> Path:
    """Another model of the same shape: same layer and head addresses, other weights."""
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("sibling"), "llama", tiny_tokenizer_session, seed=1)


@pytest.mark.parametrize(
    ("kind", "source", "flags"),
    [
        ("dynamic-ablate", "detect", ["--languages", "en"]),
        ("rag", "dynamic", ["--selections", "static", "--languages", "en", "--count", "1"]),
        ("compress", "detect", ["--languages", "en", "--seed", "3"]),
    ],
)
def test_a_source_run_of_another_model_is_refused(every_kind, sibling, tmp_path, kind, source, flags):
    import subprocess
    import sys

    out = tmp_path / kind
    command = [kind, "--heads", str(every_kind[source]), "--model", str(sibling), *flags, "--out", str(out)]
    found = subprocess.run(
        [str(Path(sys.executable).parent / "babelheads"), *command], capture_output=True, text=True
    )
    assert found.returncode == 2 and "Traceback" not in found.stderr, found.stderr
    assert "was run on another model" in found.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["ablate", "language-test", "adapt"])
def test_a_source_whose_model_files_changed_is_refused(every_kind, tmp_path, kind, tiny_model_dir, capsys):
    """These kinds load their source run's model; a model whose files changed since is another."""
    import json
    import shutil

    root = tmp_path / "runs"
    source = "detect" if kind == "ablate" else "importance"
    shutil.copytree(every_kind[source], root / source)
    manifest = json.loads((root / source / "manifest.json").read_text())
    manifest["spec"]["model"]["fingerprint"] = "files of another day"
    (root / source / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="exited with 2"):
        run_kind(kind, tiny_model_dir, root)
    assert "The model loaded now differs from the one" in capsys.readouterr().err
    assert not (root / kind).exists()
