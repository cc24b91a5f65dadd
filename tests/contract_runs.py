"""One small run of every kind on a tiny local model, through the command line, and their tables.

The contract test compares these tables with the ones the code wrote before the experiment contract
(tests/golden/, written by ``python tests/contract_runs.py --write tests/golden``): a refactor of the
lifecycle must not change a number. Run as a script it (re)writes the goldens.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

QUICK = ["--quiet", "--device", "cpu"]
NIAH = ["--lengths", "800", "--depths", "0.3,0.7", "--max-new-tokens", "4"]
# Columns that are not results: the outputs' text holds the same tokens, times and paths vary.
VOLATILE = ("seconds", "elapsed", "time", "created", "path")


def cli(*args: str) -> None:
    from babelheads import cli as command_line

    sys.argv = ["babelheads", *args]
    try:
        command_line.main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise RuntimeError(f"babelheads {' '.join(args)} exited with {exit_.code}") from None


def run_every_kind(model: Path, root: Path) -> dict[str, Path]:
    """Every kind of run, each small, in ``root``; returns kind -> run directory."""
    from test_report import fabricate

    runs = {kind: root / kind for kind in KINDS}
    cli("detect", "--model", str(model), "--out", str(root / "detect-raw"), *NIAH, *QUICK)
    fabricate(root / "detect-raw", runs["detect"], {"en": 3, "de": 3, "zh": 3})
    cli(
        "ablate",
        str(runs["detect"]),
        "--out",
        str(runs["ablate"]),
        "--lengths",
        "800",
        "--depths",
        "0.5",
        "--k",
        "1,2",
        "--random-seeds",
        "2",
        "--max-new-tokens",
        "4",
        *QUICK,
    )
    cli(
        "importance",
        "--model",
        str(model),
        "--languages",
        "en,de,zh",
        "--texts",
        "3",
        "--window",
        "48",
        "--percentile",
        "70",
        "--min-languages",
        "2",
        "--out",
        str(runs["importance"]),
        *QUICK,
    )
    cli(
        "language-test",
        str(runs["importance"]),
        "--exp",
        "ppl",
        "--texts",
        "2",
        "--replicates",
        "50",
        "--out",
        str(runs["language-test"]),
        *QUICK,
    )
    cli(
        "adapt",
        str(runs["importance"]),
        "--language",
        "de",
        "--train-questions",
        "2",
        "--eval-questions",
        "2",
        "--epochs",
        "1",
        "--random-seeds",
        "1",
        "--replicates",
        "50",
        "--out",
        str(runs["adapt"]),
        *QUICK,
    )
    cli(
        "dynamic",
        "--model",
        str(model),
        "--lengths",
        "1000",
        "--depths",
        "0.3,0.7",
        "--needles-per-cell",
        "2",
        "--max-new-tokens",
        "5",
        "--replicates",
        "50",
        "--epochs",
        "2",
        "--lags",
        "0,1",
        "--shuffles",
        "1",
        "--out",
        str(runs["dynamic"]),
        *QUICK,
    )
    cli(
        "dynamic-ablate",
        "--heads",
        str(runs["detect"]),
        "--languages",
        "en",
        "--lengths",
        "1000",
        "--depths",
        "0.5",
        "--needles-per-cell",
        "1",
        "--max-new-tokens",
        "3",
        "--progressive",
        "1,2",
        "--random-seeds",
        "1",
        "--replicates",
        "50",
        "--out",
        str(runs["dynamic-ablate"]),
        *QUICK,
    )
    cli(
        "rag",
        "--model",
        str(model),
        "--languages",
        "en",
        "--count",
        "2",
        "--selections",
        "dragin,question,none",
        "--threshold",
        "0",
        "--retrievals",
        "1",
        "--max-new-tokens",
        "4",
        "--replicates",
        "50",
        "--out",
        str(runs["rag"]),
        *QUICK,
    )
    scores = root / "scores.json"
    rng = np.random.default_rng(0)
    scores.write_text(
        json.dumps({f"{layer}-{head}": [float(rng.random())] for layer in range(3) for head in range(4)})
    )
    cli(
        "compress",
        "--heads",
        str(scores),
        "--model",
        str(model),
        "--languages",
        "en",
        "--lengths",
        "800",
        "--depths",
        "0.5",
        "--needles-per-cell",
        "1",
        "--max-new-tokens",
        "4",
        "--replicates",
        "50",
        "--out",
        str(runs["compress"]),
        *QUICK,
    )
    return runs


KINDS = (
    "detect",
    "ablate",
    "importance",
    "language-test",
    "adapt",
    "dynamic",
    "dynamic-ablate",
    "rag",
    "compress",
)


def tables(run: Path) -> dict[str, pd.DataFrame]:
    """Every table a run holds: parts (all samples, sorted) and derived tables; volatile columns out."""
    from babelheads.runs import RunStore

    store = RunStore(run)
    found = {f"tables/{path.name}": store.table(path.name) for path in sorted((run / "tables").iterdir())}
    found |= {path.stem: pd.read_parquet(path) for path in sorted(run.glob("*.parquet"))}
    return {name: _stable(frame) for name, frame in found.items()}


def _stable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [column for column in frame.columns if any(word in column for word in VOLATILE)]
    frame = frame.drop(columns=drop)
    for column in frame.columns:  # bytes (hidden states, peak lists) compare as their digests
        if frame[column].map(lambda value: isinstance(value, bytes | np.ndarray | list)).any():
            frame[column] = frame[column].map(lambda value: repr(np.asarray(value).tolist())[:4000])
    return frame.reset_index(drop=True)


def write_goldens(target: Path, work: Path) -> None:
    from tiny_models import save_tiny_model, tiny_tokenizer

    model = save_tiny_model(work / "model", "llama", tiny_tokenizer())
    runs = run_every_kind(model, work / "runs")
    shutil.rmtree(target, ignore_errors=True)
    for kind, run in runs.items():
        for name, frame in tables(run).items():
            path = target / kind / f"{name.replace('/', '__')}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(path, index=False)


if __name__ == "__main__":
    import tempfile

    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        sys.exit("usage: python tests/contract_runs.py --write tests/golden")
    with tempfile.TemporaryDirectory() as work:
        write_goldens(Path(sys.argv[2]), Path(work))
