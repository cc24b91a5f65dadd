"""Ablation with one prefill per prompt and batched head sets against plain generation per head set.

    python benchmarks/ablate_speed.py [--model gemma-3-270m] [--head-sets 9] [--device cuda --dtype bfloat16]

The default ablation prompts (``babelheads ablate``'s grid: en, de, zh; 1000 tokens; depths 0.25, 0.5,
0.75; haystacks of seed 1), each under 9 head sets (none and 8 draws of 4 random heads), masked while
decoding only (the official protocol), in one run, each side in its own process:
- ablate : the runner, as ``babelheads ablate --phases decode`` runs it (one prefill per prompt, the
  head sets decoded as one batch);
- plain : the model's own ``generate`` with sdpa, once per prompt and head set (9 x per prompt),
  asked for the same number of new tokens as the ablate side emitted for that pair.
The last line reads ``ablate/plain=R``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _measure import PeakMemory, add_common_arguments, run_worker


def ablation_jobs(loaded, head_sets: int):
    import numpy as np

    from babelheads.experiments.ablate import AblateConfig
    from babelheads.heads import HeadAddress
    from babelheads.probe import HeadGates
    from babelheads.runner import Job
    from babelheads.tasks.niah import NiahSettings, NiahTask

    defaults = AblateConfig(run="")
    settings = NiahSettings(lengths=defaults.lengths, depths=defaults.depths, seed=1)
    task = NiahTask(settings)
    samples = [sample for sample in task.build(loaded) if hasattr(sample, "input_ids")]
    layout = loaded.layout
    rng = np.random.default_rng(0)
    sets: list[HeadGates | None] = [None]
    for _ in range(head_sets - 1):
        chosen = rng.choice(layout.total_heads, 4, replace=False)
        heads = [HeadAddress(int(i) // layout.num_heads, int(i) % layout.num_heads) for i in chosen]
        sets.append(HeadGates.mask(layout, heads, phases=("decode",)))
    jobs = [
        Job(f"{index}--{sample.sample_id}", sample, gates, (("job", f"{index}--{sample.sample_id}"),))
        for index, gates in enumerate(sets)
        for sample in samples
    ]
    return task, jobs


def worker(args) -> None:
    import torch

    from babelheads.models import load_model
    from babelheads.runner import RunSettings, run_jobs
    from babelheads.runs import RunStore

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    task, jobs = ablation_jobs(loaded, args.head_sets)
    loaded.model(input_ids=torch.tensor([jobs[0].sample.input_ids[:64]], device=loaded.device))
    if args.worker == "ablate":
        settings = RunSettings(args.new_tokens, batch_size=args.batch_size)
        with tempfile.TemporaryDirectory() as directory:
            store = RunStore(Path(directory) / "run")
            store.create({"kind": "benchmark"}, 0)
            with PeakMemory(loaded.device) as memory:
                start = time.perf_counter()
                run_jobs(store, loaded, jobs, task.score, settings, progress=False)
                seconds = time.perf_counter() - start
            samples = store.table("samples")
        steps = dict(zip(samples["job"], samples["steps"].astype(int).tolist(), strict=True))
    else:
        wanted = json.loads(Path(args.steps).read_text())["steps"]
        model = loaded.model
        model.set_attn_implementation("sdpa")
        with PeakMemory(loaded.device) as memory:
            start = time.perf_counter()
            for job in jobs:
                count = wanted[job.part_id]
                ids = torch.tensor([job.sample.input_ids], device=loaded.device)
                model.generate(ids, max_new_tokens=count, min_new_tokens=count - 1, do_sample=False)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        steps = wanted
    Path(args.result).write_text(json.dumps({"seconds": seconds, "peak_bytes": memory.peak, "steps": steps}))


def measure(args, mode: str, scratch: Path) -> dict:
    result = scratch / f"{mode}.json"
    command = [
        sys.executable, __file__, "--worker", mode, "--result", str(result),
        "--steps", str(scratch / "ablate.json"),
        "--model", args.model, "--new-tokens", str(args.new_tokens), "--head-sets", str(args.head_sets),
        "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    return run_worker(command, result, mode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, new_tokens=16)  # ablate's default max_new_tokens
    parser.add_argument("--head-sets", type=int, default=9)
    parser.add_argument("--worker", choices=("ablate", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        ablate = measure(args, "ablate", scratch)
        plain = measure(args, "plain", scratch)
    decodes = len(ablate["steps"])
    print(f"model {args.model}: {decodes} decodes ({args.head_sets} head sets per prompt), decode-only masks")
    print(f"{'side':>7} {'seconds':>9} {'peak MiB':>9}")
    for name, result in (("ablate", ablate), ("plain", plain)):
        print(f"{name:>7} {result['seconds']:>9.2f} {result['peak_bytes'] / 2**20:>9.0f}")
    print(f"ablate/plain={ablate['seconds'] / plain['seconds']:.2f}")


if __name__ == "__main__":
    main()
