"""The study's detection grid with shared prefixes and batches against plain per-sample generation.

    python benchmarks/grid_speed.py [--model gemma-3-270m] [--batch-size N] [--device cuda --dtype bfloat16]

In one run, each side in its own process (so peak memory is its own), greedy:
- grid : the runner on the study's default detection grid (en, de, zh; its lengths, depths and needles),
  recording every step and writing the run's tables, as ``babelheads study`` does;
- plain : the model's own ``generate`` with sdpa, one sample at a time, nothing recorded, asked for the
  same number of new tokens as the grid emitted for that sample (the baseline).
tokens_equal is the share of samples whose generated tokens are the same on both sides; the
differences are listed with the first step where they part. The last line reads
``grid/plain=R tokens_equal=F peak_mem_ratio=M``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _measure import PeakMemory, add_common_arguments, run_worker


def grid_samples(loaded):
    from babelheads.study import PROFILES, StudyConfig, detection_grid
    from babelheads.tasks.niah import NiahTask

    task = NiahTask(detection_grid(StudyConfig(), PROFILES["default"]))
    return task, [sample for sample in task.build(loaded) if hasattr(sample, "input_ids")]


def run_grid(args, loaded, samples, task) -> dict:
    from babelheads.probe import ProbeSettings
    from babelheads.runner import Job, RunSettings, run_jobs
    from babelheads.runs import RunStore

    settings = RunSettings(args.new_tokens, ProbeSettings(), batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as directory:
        store = RunStore(Path(directory) / "run")
        store.create({"kind": "benchmark"}, 0)
        jobs = [Job(sample.sample_id, sample) for sample in samples]
        with PeakMemory(loaded.device) as memory:
            start = time.perf_counter()
            run_jobs(store, loaded, jobs, task.score, settings, progress=False)
            seconds = time.perf_counter() - start
        events = store.table("events")
    first = events[(events["layer"] == 0) & (events["head"] == 0)].sort_values(["sample_id", "step"])
    tokens = {sid: group["token"].tolist() for sid, group in first.groupby("sample_id")}
    return {"seconds": seconds, "peak_bytes": memory.peak, "tokens": tokens}


def run_plain(args, loaded, samples, wanted: dict[str, list[int]]) -> dict:
    import torch

    model = loaded.model
    model.set_attn_implementation("sdpa")
    produced = {}
    with PeakMemory(loaded.device) as memory:
        start = time.perf_counter()
        for sample in samples:
            count = len(wanted[sample.sample_id])
            ids = torch.tensor([sample.input_ids], device=loaded.device)
            # EOS may end the last step only, as it did on the grid side.
            out = model.generate(ids, max_new_tokens=count, min_new_tokens=count - 1, do_sample=False)
            produced[sample.sample_id] = out[0, ids.shape[1] :].tolist()
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": memory.peak, "tokens": produced}


def worker(args) -> None:
    import torch

    from babelheads.models import load_model

    torch.manual_seed(0)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    task, samples = grid_samples(loaded)
    warm = samples[0]
    loaded.model(input_ids=torch.tensor([warm.input_ids[:64]], device=loaded.device))  # first-call kernels
    if args.worker == "grid":
        result = run_grid(args, loaded, samples, task)
    else:
        result = run_plain(args, loaded, samples, json.loads(Path(args.tokens).read_text())["tokens"])
    Path(args.result).write_text(json.dumps(result))


def measure(args, mode: str, scratch: Path) -> dict:
    result = scratch / f"{mode}.json"
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--result",
        str(result),
        "--tokens",
        str(scratch / "grid.json"),
        "--model",
        args.model,
        "--new-tokens",
        str(args.new_tokens),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    return run_worker(command, result, mode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, new_tokens=32)
    parser.add_argument("--worker", choices=("grid", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        grid = measure(args, "grid", scratch)
        plain = measure(args, "plain", scratch)
    same, differences = 0, []
    for sample_id, tokens in grid["tokens"].items():
        other = plain["tokens"][sample_id]
        if tokens == other:
            same += 1
            continue
        parted = next((i for i, (a, b) in enumerate(zip(tokens, other, strict=False)) if a != b), len(other))
        differences.append(f"{sample_id} (from step {parted})")
    total = len(grid["tokens"])
    steps = sum(len(tokens) for tokens in grid["tokens"].values())
    print(f"model {args.model}: {total} samples of the study's detection grid, {steps} generated tokens")
    print(f"{'side':>6} {'seconds':>9} {'peak MiB':>9}")
    for name, result in (("grid", grid), ("plain", plain)):
        print(f"{name:>6} {result['seconds']:>9.2f} {result['peak_bytes'] / 2**20:>9.0f}")
    if differences:
        print(f"tokens differ in {len(differences)}: " + ", ".join(differences))
    ratio = grid["seconds"] / plain["seconds"]
    memory = grid["peak_bytes"] / plain["peak_bytes"]
    print(f"grid/plain={ratio:.2f} tokens_equal={same / total:.2f} peak_mem_ratio={memory:.2f}")


if __name__ == "__main__":
    main()
