"""The study's detect stage: detection and retrieval + translation decoded in one walk, against the two
runs decoded one after the other (as the study did before they were one stage).

    python benchmarks/detect_stage.py [--model gemma-3-270m] [--languages en,de,zh] [--device cuda]

Both sides run the study's default profile's runs (detection in every language with hidden states;
retrieval + translation from the first language into the others), each side in its own process with
the model loaded before the clock starts. Counted: seconds, prompt tokens the prefills computed, and
whether every sample's output is the same on both sides. The last line reads
``together/alone=R prefill_tokens=T outputs_equal=F``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _measure import run_worker


def configs(model: str, languages: tuple[str, ...], dtype: str):
    from babelheads.experiments.detect import DetectConfig
    from babelheads.study import PROFILES, StudyConfig, detection_grid

    profile = PROFILES["default"]
    study = StudyConfig(model=model, languages=languages, translate_from=languages[0], dtype=dtype)
    grid = detection_grid(study, profile)
    pairs = tuple(f"{languages[0]}:{target}" for target in languages[1:])
    translation = replace(grid, languages=(), pairs=pairs)
    return [
        DetectConfig(model=model, task=grid, dtype=dtype, hidden_states=True, **profile.detect),
        DetectConfig(model=model, task=translation, dtype=dtype, **profile.detect),
    ]


def worker(args) -> None:
    from babelheads.execution import Execution
    from babelheads.experiments.detect import detect, detect_together
    from babelheads.runner.prefix import SharedPrefill
    from babelheads.runs import RunStore
    from babelheads.study.runner import SharedModel

    computed = [0]
    extend = SharedPrefill._extend

    def counting(self, prefix, start, end):
        computed[0] += max(end - start, 0)
        return extend(self, prefix, start, end)

    SharedPrefill._extend = counting
    languages = tuple(args.languages.split(","))
    runs = configs(args.model, languages, args.dtype)
    execution = SharedModel.of(Execution(device=args.device, batch_size=args.batch_size, progress=False))
    execution.load(args.model, args.dtype)  # before the clock, as the study loads it once for every stage
    with tempfile.TemporaryDirectory() as directory:
        outs = [Path(directory) / name for name in ("detect", "translation")]
        start = time.perf_counter()
        if args.worker == "together":
            detect_together(list(zip(runs, outs, strict=True)), execution)
        else:
            for config, out in zip(runs, outs, strict=True):
                detect(config, out, execution)
        seconds = time.perf_counter() - start
        outputs = {}
        for out in outs:
            samples = RunStore(out).table("samples")
            outputs.update(dict(zip(out.name + "/" + samples["sample_id"], samples["output"], strict=True)))
    result = {"seconds": seconds, "prefill_tokens": computed[0], "outputs": outputs}
    Path(args.result).write_text(json.dumps(result))


def measure(args, side: str, scratch: Path) -> dict:
    result = scratch / f"{side}.json"
    command = [sys.executable, __file__, "--worker", side, "--result", str(result), "--model", args.model]
    command += ["--languages", args.languages, "--device", args.device, "--dtype", args.dtype]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    return run_worker(command, result, side)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--languages", default="en,de,zh")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--worker", choices=("alone", "together"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as directory:
        alone = measure(args, "alone", Path(directory))
        together = measure(args, "together", Path(directory))
    same = sum(together["outputs"][key] == output for key, output in alone["outputs"].items())
    print(f"model {args.model}, languages {args.languages}: {len(alone['outputs'])} samples in two runs")
    print(f"{'side':>9} {'seconds':>9} {'prefill tokens':>15}")
    for name, result in (("alone", alone), ("together", together)):
        print(f"{name:>9} {result['seconds']:>9.1f} {result['prefill_tokens']:>15}")
    ratio = together["seconds"] / alone["seconds"]
    tokens = together["prefill_tokens"] / alone["prefill_tokens"]
    equal = same / len(alone["outputs"])
    print(f"together/alone={ratio:.2f} prefill_tokens={tokens:.2f} outputs_equal={equal:.2f}")


if __name__ == "__main__":
    main()
