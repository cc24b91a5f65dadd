"""KV-cache bytes and NIAH accuracy per compression policy, against the full cache in the same run.

    python benchmarks/kv_memory.py [--smol-heads RUN] [--gemma-heads RUN] [--lengths 2000,4000]
                                   [--device cuda --dtype bfloat16]

For SmolLM2-135M (30 full-attention layers, 3 KV heads each) and Gemma 3 270M (one KV head per layer,
15 of 18 layers sliding), on NIAH with the built-in needles at each length: the bytes the cache
holds once the prompt is in (as a share of ``full``) and the accuracy of ``full``, ``head-split``
(the heads run's English retrieval heads keep everything: --share 0.25 of the KV heads in
full-attention layers; the others sink 64 + window 256),
``window`` (every head the same window, equal bytes) and ``random-heads`` (as many random heads per
layer). Without ``--*-heads`` a small detection run (English, 1000 tokens) is made first. On a GPU
it also reports the peak allocated while decoding above the weights and the shared reference
prefill (the policy's own cache and activations). The last line reads, for SmolLM2 at the longest
length,
``kv_bytes_ratio=R accuracy_full=A0 accuracy_headsplit=A1 accuracy_window=A2``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

MODELS = {"smollm2-135m": "smol_heads", "gemma-3-270m": "gemma_heads"}


def heads_run(model: str, given: str | None, scratch: Path, execution) -> str:
    if given:
        return given
    from babelheads.experiments.detect import DetectConfig, detect
    from babelheads.tasks.niah import NiahSettings

    out = scratch / f"detect-{model}"
    task = NiahSettings(("en",), needles="magic", lengths=(1000,), depths=(0.25, 0.75), needles_per_cell=3)
    detect(DetectConfig(model=model, task=task), out, execution)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smol-heads")
    parser.add_argument("--gemma-heads")
    parser.add_argument("--lengths", default="2000,4000")
    parser.add_argument("--needles-per-cell", type=int, default=2)
    parser.add_argument("--share", type=float, default=0.25, help="Share of KV heads kept whole.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default=None, help="Where the runs go (default: a temporary directory).")
    args = parser.parse_args()

    from babelheads.execution import Execution
    from babelheads.experiments.compress import CompressConfig, compress
    from babelheads.tasks.niah import NiahSettings

    execution = Execution(device=args.device, progress=False)
    lengths = tuple(sorted(int(value) for value in args.lengths.split(",")))
    scratch = Path(args.out or tempfile.mkdtemp(prefix="kv-memory-"))
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    print(f"machine: {machine}; device {args.device}, dtype {args.dtype}")
    print("| model | length | policy | KV bytes / full | full-attention layers / full | accuracy | samples |")
    print("|---|---|---|---|---|---|---|")
    last = None
    for model, option in MODELS.items():
        heads = heads_run(model, getattr(args, option), scratch, execution)
        for length in lengths:
            config = CompressConfig(
                heads=heads,
                model=model,
                niah=NiahSettings(
                    ("en",),
                    lengths=(length,),
                    depths=(0.25, 0.5, 0.75),
                    needles_per_cell=args.needles_per_cell,
                    seed=1,
                ),
                policies=("full", "head-split", "window", "random-heads"),
                head_sets=("en",),
                shares=(args.share,),
                dtype=args.dtype,
                replicates=500,
            )
            store = compress(config, scratch / f"compress-{model}-{length}", execution)
            scores = store.derived("compress_scores").set_index("policy")
            samples = store.table("samples")
            for policy, row in scores.iterrows():
                peak = samples.loc[samples["policy"] == policy, "peak_decode"].max()
                memory = "" if peak != peak else f", decode peak {peak / 2**20:.0f} MiB over weights"
                accuracy = f"{row['accuracy']:.2f} [{row['accuracy_lo']:.2f}, {row['accuracy_hi']:.2f}]"
                print(
                    f"| {model} | {length} | {policy} | {row['bytes_ratio']:.3f} | "
                    f"{row['full_layers_ratio']:.3f} | {accuracy}{memory} | {int(row['n'])} |"
                )
            if model == "smollm2-135m":
                last = scores
    print(
        f"kv_bytes_ratio={last.loc['head-split', 'bytes_ratio']:.3f} "
        f"accuracy_full={last.loc['full', 'accuracy']:.2f} "
        f"accuracy_headsplit={last.loc['head-split', 'accuracy']:.2f} "
        f"accuracy_window={last.loc['window', 'accuracy']:.2f}"
    )


if __name__ == "__main__":
    main()
