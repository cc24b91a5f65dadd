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


def commands(model: Path, root: Path) -> dict[str, list[str]]:
    """Each kind's command line (after the source runs it reads exist), kind -> arguments."""
    runs = {kind: str(root / kind) for kind in KINDS}
    scores = root / "scores.json"
    return {
        "ablate": [
            "ablate",
            runs["detect"],
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
        ],
        "importance": [
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
        ],
        "language-test": [
            "language-test",
            runs["importance"],
            "--exp",
            "ppl",
            "--texts",
            "2",
            "--replicates",
            "50",
        ],
        "adapt": [
            "adapt",
            runs["importance"],
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
        ],
        "dynamic": [
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
            # The goldens decoded its 12 samples 8 rows a batch (the CPU default then); rows batched
            # otherwise part in the last float bits, which the peak lists' text shows.
            "--batch-size",
            "8",
        ],
        "dynamic-ablate": [
            "dynamic-ablate",
            "--heads",
            runs["detect"],
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
        ],
        "rag": [
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
        ],
        "compress": [
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
        ],
    }


ANALYSIS_CHANGES = {
    "ablate": ["--replicates", "30"],
    "language-test": ["--replicates", "30"],
    "adapt": ["--replicates", "30"],
    "dynamic": ["--replicates", "30"],
    "dynamic-ablate": ["--replicates", "30"],
    "rag": ["--replicates", "30"],
    "compress": ["--replicates", "30"],
    # Last: the language tests and the adaptation read the heads it selects, so a new selection makes
    # them other runs (they are refused as such, rightly).
    "importance": ["--percentile", "60"],
}
"""A setting of each kind that only changes its analysis: a finished run re-analyses, runs nothing."""


def run_kind(kind: str, model: Path, root: Path, *extra: str) -> None:
    cli(*commands(model, root)[kind], *extra, "--out", str(root / kind), *QUICK)


def run_every_kind(model: Path, root: Path) -> dict[str, Path]:
    """Every kind of run, each small, in ``root``; returns kind -> run directory."""
    from test_report import fabricate

    cli("detect", "--model", str(model), "--out", str(root / "detect-raw"), *NIAH, *QUICK)
    fabricate(root / "detect-raw", root / "detect", {"en": 3, "de": 3, "zh": 3})
    rng = np.random.default_rng(0)
    scores = {f"{layer}-{head}": [float(rng.random())] for layer in range(3) for head in range(4)}
    (root / "scores.json").write_text(json.dumps(scores))
    for kind in commands(model, root):
        run_kind(kind, model, root)
    return {kind: root / kind for kind in KINDS}


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
    drop += [column for column in ("model", "run") if column in frame]  # a claim's model and run: paths
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
