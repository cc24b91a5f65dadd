"""LAHIS importance: babelheads' batched gate gradients against one text at a time with the model's own loss.

    python benchmarks/importance_speed.py [--texts 8] [--window 192] [--device cuda --dtype bfloat16]

Both sides compute dL/dm for every query head's gate on the same token windows (en, the corpus's
scoring half), in their own processes, with the model's weights frozen:
- batched : ``gate_gradients`` as ``babelheads importance`` runs it, --batch-size rows a pass, one gate
  tensor per row;
- single : the released code's loop, one text per forward and backward pass through
  ``model(input_ids, labels=input_ids).loss`` with one (layers, heads) gate.
The last line reads ``batched/single=R peak_mem_ratio=M max_relative_gradient_difference=D``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _measure import PeakMemory, run_worker


def worker(args) -> None:
    import torch

    from babelheads.experiments.importance import gate_gradients
    from babelheads.models import load_model
    from babelheads.probe import HeadGates, Instrument
    from babelheads.runner.losses import frozen_weights
    from babelheads.tasks.lm_texts import TextSettings, TextWindows

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    windows = TextWindows(TextSettings(("en",), texts=args.texts, window=args.window)).build(loaded)
    instrument = Instrument(loaded.model, loaded.layout)
    layout = loaded.layout
    gate_gradients(loaded, instrument, windows[:1])  # warm-up: allocator and kernels
    gradients = []
    with PeakMemory(loaded.device) as memory:
        start = time.perf_counter()
        if args.side == "batched":
            for first in range(0, len(windows), args.batch_size):
                gradients.append(
                    gate_gradients(loaded, instrument, windows[first : first + args.batch_size])[0]
                )
        else:
            with torch.enable_grad(), frozen_weights(loaded.model):
                for window in windows:
                    gate = torch.ones(layout.num_layers, layout.num_heads, requires_grad=True)
                    ids = torch.tensor([window.input_ids], device=loaded.device)
                    with instrument.gated(HeadGates(gate, frozenset({"prefill"}))):
                        loaded.model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                    gradients.append(gate.grad.double().unsqueeze(0))
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    stacked = torch.cat(gradients).cpu()
    torch.save(stacked, Path(args.result).with_suffix(".pt"))
    Path(args.result).write_text(json.dumps({"seconds": seconds, "peak": memory.peak}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--window", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        worker(args)
        return
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for side in ("single", "batched"):
            result = Path(directory) / f"{side}.json"
            command = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--result", str(result)]
            results[side] = run_worker(command, result, side)
            results[side]["gradients"] = torch.load(result.with_suffix(".pt"))
    single, batched = results["single"], results["batched"]
    difference = (batched["gradients"] - single["gradients"]).abs().max() / single["gradients"].abs().max()
    print("| side | seconds | peak MiB |\n|---|---|---|")
    for side in ("single", "batched"):
        print(f"| {side} | {results[side]['seconds']:.2f} | {results[side]['peak'] / 2**20:.0f} |")
    print(
        f"\n    batched/single={batched['seconds'] / single['seconds']:.2f} "
        f"peak_mem_ratio={batched['peak'] / single['peak']:.2f} "
        f"max_relative_gradient_difference={float(difference):.1e}"
    )


if __name__ == "__main__":
    main()
