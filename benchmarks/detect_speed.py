"""Detection speed and memory against plain generation and a naive detector, in one run.

    python benchmarks/detect_speed.py [--model gemma-3-270m] [--lengths 2000,4000] [--new-tokens 32]

Each measurement runs in a fresh worker process (so allocator state and peak memory are its own), on
the same prompts, greedy, with the same number of new tokens and no early stop:
- detect : the instrument recording every decode step (sdpa prefill, per-head peaks per step);
- generate : the model's own ``generate`` with sdpa, nothing recorded (the baseline);
- naive : eager attention with ``output_attentions`` and Python loops over heads (tests/oracle.py);
- dynamic : detect plus what dynamic-heads runs record: each step's final hidden state and every
  head's attention mass on two regions (needle, answer).
Peak memory is the peak resident set during the timed part (CPU) or torch's peak allocation (CUDA).
The last line reads ``detect/generate=R1 detect/naive=R2 peak_mem_ratio=R3 dynamic/detect=R4`` for the
longest length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _measure import PeakMemory

ROOT = Path(__file__).resolve().parent.parent
MODES = ("generate", "detect", "naive", "dynamic")


def prompts(loaded, length: int, count: int) -> list:
    from babelheads.tasks.niah import NiahSettings, NiahTask

    settings = NiahSettings(languages=("en",), lengths=(length,), depths=(0.5,), needles_per_cell=count)
    return NiahTask(settings).build(loaded)


def worker(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from babelheads.models import load_model
    from babelheads.probe import Instrument
    from babelheads.runner import greedy_decode

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    model = loaded.model
    samples = prompts(loaded, args.length, args.prompts)
    inputs = [torch.tensor([sample.input_ids], device=loaded.device) for sample in samples]
    if args.mode == "generate":
        model.set_attn_implementation("sdpa")

        def run(ids):
            return model.generate(
                ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
            )
    elif args.mode == "detect":
        instrument = Instrument(model, loaded.layout)

        def run(ids):
            return greedy_decode(instrument, ids, args.new_tokens)
    elif args.mode == "dynamic":
        from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Row, decode_rows
        from babelheads.runner.jobs import region_labels
        from babelheads.runner.prefix import SharedPrefill
        from babelheads.runner.stops import StopRule

        instrument = Instrument(model, loaded.layout)
        labels = {sample.input_ids: region_labels(sample, ("needle", "answer")) for sample in samples}

        def run(ids):
            row = Row(ids[0].tolist(), args.new_tokens, None, labels[tuple(ids[0].tolist())])
            prefill = SharedPrefill(model, DEFAULT_PREFILL_CHUNK, share=False)
            return decode_rows(instrument, prefill, [row], StopRule(), True, regions=2, hidden=True)
    else:
        from oracle import naive_peaks

        def run(ids):
            return naive_peaks(model, ids, args.new_tokens, use_cache=True)

    run(inputs[0])  # warm-up at full length: first-call kernels and the allocator growing to this size
    seconds = []
    with PeakMemory(loaded.device) as memory:
        for ids in inputs:
            start = time.perf_counter()
            run(ids)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    print(
        json.dumps(
            {"seconds": sum(seconds), "peak_bytes": memory.peak, "tokens": [i.shape[1] for i in inputs]}
        )
    )


def measure(args, mode: str, length: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--length",
        str(length),
        "--model",
        args.model,
        "--new-tokens",
        str(args.new_tokens),
        "--prompts",
        str(args.prompts),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"worker {mode} at {length} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--lengths", default="2000,4000")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per length (different needles)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        worker(args)
        return
    modes = [mode for mode in MODES if not (args.skip_naive and mode == "naive")]
    print(f"model {args.model}, {args.prompts} prompts per length, {args.new_tokens} new tokens, greedy")
    print(f"{'length':>7} {'mode':>9} {'seconds':>9} {'peak MiB':>9}")
    ratios = {}
    for length in [int(value) for value in args.lengths.split(",")]:
        results = {mode: measure(args, mode, length) for mode in modes}
        for mode, result in results.items():
            print(f"{length:>7} {mode:>9} {result['seconds']:>9.2f} {result['peak_bytes'] / 2**20:>9.0f}")
        detect, generate = results["detect"], results["generate"]
        ratios = {
            "detect/generate": detect["seconds"] / generate["seconds"],
            "detect/naive": detect["seconds"] / results["naive"]["seconds"]
            if "naive" in results
            else float("nan"),
            "peak_mem_ratio": detect["peak_bytes"] / generate["peak_bytes"],
            "dynamic/detect": results["dynamic"]["seconds"] / detect["seconds"],
        }
    print(" ".join(f"{name}={value:.2f}" for name, value in ratios.items()))


if __name__ == "__main__":
    main()
