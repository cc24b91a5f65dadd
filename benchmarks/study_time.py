"""Where the study's time goes, stage by stage, and how two environments compare on it.

    python benchmarks/study_time.py --read runs/demo                    # a finished study's stages
    python benchmarks/study_time.py --only detect \\
        --pythons .venv/bin/python,/tmp/venv524/bin/python                # two environments, one run
    python benchmarks/study_time.py --only detect,ablate --batch-sizes 8,16   # two batch sizes

--read prints the stages a study recorded (study.json): seconds, share of the total, parts, seconds
per part. With --pythons, each interpreter runs the same ``babelheads study --only ...`` in its own
process and fresh directory (the model cache is shared, so convert it once before), one after the
other, and the last line reads ``<second>/<first>=R`` per stage and in all: the first is the baseline.
With --batch-sizes, this interpreter runs both sides, each with its ``--batch-size``; since rows batched
with other rows can part at numerical near-ties, the share of equal outputs is printed too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def stage_table(study: Path) -> list[dict]:
    """Each stage's status, seconds and parts (its runs' finished parts), from study.json."""
    record = json.loads((study / "study.json").read_text())
    rows = []
    for name, entry in record["stages"].items():
        parts = sum(
            len(list((study / run / "tables" / "samples").glob("*.parquet"))) for run in entry.get("runs", [])
        )
        rows.append({"stage": name, "status": entry["status"], "seconds": entry["seconds"], "parts": parts})
    return rows


def print_table(rows: list[dict]) -> None:
    total = sum(row["seconds"] for row in rows)
    print("| stage | status | seconds | share | parts | s/part |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        per_part = f"{row['seconds'] / row['parts']:.2f}" if row["parts"] else "-"
        share = row["seconds"] / total if total else 0.0
        print(
            f"| {row['stage']} | {row['status']} | {row['seconds']:.0f} | {share:.0%} | {row['parts']} | "
            f"{per_part} |"
        )
    print(f"| all | | {total:.0f} | 100% | | |")


def outputs(study: Path) -> dict[str, str]:
    """Every decoded sample's output in the study's runs, by run and sample."""
    from babelheads.runs import RunStore

    found = {}
    for manifest in sorted(study.rglob("manifest.json")):
        samples = RunStore(manifest.parent).table("samples")
        if "output" in samples:
            for sample_id, output in zip(samples["sample_id"], samples["output"], strict=True):
                found[f"{manifest.parent.name}/{sample_id}"] = str(output)
    return found


def run_side(python: str, only: str, out: Path, extra: list[str]) -> list[dict]:
    command = [python, "-m", "babelheads.cli", "study", "--out", str(out), "--quiet", "--only", only, *extra]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        sys.exit(f"{python} failed:\n{finished.stderr[-3000:]}")
    version = subprocess.run(
        [python, "-c", "import transformers, torch; print(transformers.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"{python}: transformers, torch = {version}")
    return [row for row in stage_table(out) if row["status"] == "done"]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--read", type=Path, help="a finished study directory: print its stages")
    parser.add_argument("--pythons", default="", help="interpreters to compare, the baseline first")
    parser.add_argument("--batch-sizes", default="", help="two --batch-size values, the baseline first")
    parser.add_argument("--only", default="detect", help="the study's stages each side runs")
    parser.add_argument("extra", nargs="*", help="more study options, after --")
    args = parser.parse_args()
    if args.read:
        print_table(stage_table(args.read))
        return
    pythons = [python for python in args.pythons.split(",") if python]
    sizes = [size for size in args.batch_sizes.split(",") if size]
    if len(pythons) == 2:
        plans = [(python, args.extra) for python in pythons]
    elif len(sizes) == 2:
        plans = [(sys.executable, [*args.extra, "--batch-size", size]) for size in sizes]
    else:
        sys.exit("give --read DIR, --pythons BASELINE,OTHER or --batch-sizes BASELINE,OTHER")
    sides, produced = [], []
    with tempfile.TemporaryDirectory() as directory:
        for index, (python, extra) in enumerate(plans):
            out = Path(directory) / f"side{index}"
            rows = run_side(python, args.only, out, extra)
            print(f"side {index}: {' '.join(extra) or 'as given'}")
            print_table(rows)
            sides.append({row["stage"]: row["seconds"] for row in rows})
            produced.append(outputs(out))
    ratios = [f"{stage}={sides[1][stage] / sides[0][stage]:.2f}" for stage in sides[0] if stage in sides[1]]
    total = sum(sides[1].values()) / sum(sides[0].values())
    same = sum(produced[1].get(key) == output for key, output in produced[0].items())
    equal = f" outputs_equal={same / len(produced[0]):.2f}" if produced[0] else ""
    print(f"second/first: {' '.join(ratios)} all={total:.2f}{equal}")


if __name__ == "__main__":
    main()
