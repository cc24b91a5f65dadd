"""Prefills through the decoder body against the whole model keeping one row of logits, on a stage of
the study.

    python benchmarks/prefill_body.py --study runs/demo [--stage language-tests]

A prefill only fills the KV cache, yet the whole model also projects one row onto the vocabulary on
every pass: on Gemma 3 270M (262K tokens) that is a 671 MB matrix-vector product, about 55 ms on 2
CPU cores, paid once per prefill pass, so most where a shared prefix leaves a few tokens to extend
(the LAHIS experiments' many short prompts). Each side runs ``babelheads study --only STAGE`` in its
own process on copies of the finished runs the stage reads (taken from ``--study``): ``whole`` runs
the model with ``logits_to_keep=1`` on every prefill pass (the baseline: the runner before), ``body``
runs the decoder body only (the runner now). Their tables must be equal. The last line reads
``body/whole=R tables_equal=B``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WHOLE = "import babelheads.runner.cache as c; c._body = lambda model: None"
"""The baseline: the runner with the body lookup switched off (the whole model, one row of logits)."""


def run_side(side: str, args, inputs: list[str], scratch: Path) -> tuple[float, Path]:
    out = scratch / side
    for run in inputs:
        shutil.copytree(args.study / run, out / run)
    patch = WHOLE if side == "whole" else "pass"
    code = f"{patch}\nimport sys\nfrom babelheads.cli import main\nsys.argv[0] = 'babelheads'\nmain()"
    command = [sys.executable, "-c", code, "study", "--out", str(out), "--only", args.stage]
    command += ["--skip", "report", "--quiet", "--model", args.model]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if finished.returncode != 0 or " ... not run" in finished.stderr:
        sys.exit(f"side {side} failed:\n{finished.stderr[-3000:]}")
    return seconds, out


def tables_equal(first: Path, second: Path, runs: list[str]) -> bool:
    from babelheads.runs import RunStore

    for run in runs:
        a, b = RunStore(first / run).table("samples"), RunStore(second / run).table("samples")
        a, b = a.drop(columns=["seconds"], errors="ignore"), b.drop(columns=["seconds"], errors="ignore")
        if not a.equals(b):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, required=True, help="a finished study's directory")
    parser.add_argument("--stage", default="language-tests")
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    from babelheads.study import StudyConfig, profile_named, stages

    listed = {stage.name: stage for stage in stages(StudyConfig(model=args.model), profile_named("default"))}
    stage = listed[args.stage]
    inputs = [run for need in stage.needs for run in listed[need].runs]
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        whole, whole_out = run_side("whole", args, inputs, scratch)
        body, body_out = run_side("body", args, inputs, scratch)
        equal = tables_equal(whole_out, body_out, list(stage.runs))
    print(f"model {args.model}, stage {args.stage} (reading {', '.join(inputs)})")
    print(f"whole {whole:8.1f} s\n body {body:8.1f} s")
    print(f"body/whole={body / whole:.2f} tables_equal={equal}")


if __name__ == "__main__":
    main()
