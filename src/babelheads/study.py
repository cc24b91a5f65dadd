"""The embedded default job: detect -> retrieval + translation -> compare -> ablate -> report.

It sits above the experiments and the report: nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.report.html import build_report
from babelheads.runs import RunStore
from babelheads.tasks.niah import NiahSettings

STUDY_NEEDLES_PER_CELL = 3


@dataclass(frozen=True)
class StudyConfig:
    """One model, several languages: where each step's run goes is fixed under ``out``."""

    model: str = "gemma-3-270m"
    languages: tuple[str, ...] = ("en", "de", "zh")
    translate_from: str = "en"
    seed: int = 0
    dtype: str = "auto"


def detection_grid(config: StudyConfig) -> NiahSettings:
    """The study's NIAH grid: 2 lengths x 5 depths x 3 needles (both kinds) = 30 samples per language
    or translation pair, enough for intervals that can tell effects apart on a small model."""
    return NiahSettings(
        languages=config.languages,
        lengths=(1000, 2000),
        depths=(0.0, 0.25, 0.5, 0.75, 1.0),
        needles_per_cell=STUDY_NEEDLES_PER_CELL,
        seed=config.seed,
    )


def run_study(
    config: StudyConfig,
    out: Path,
    execution: Execution = DEFAULT_EXECUTION,
    say: Callable[[str], None] = print,
) -> Path:
    """Run every step (each resumes if its run exists) and return the report's path."""
    common = {"model": config.model, "dtype": config.dtype}
    say("1/5 detection")
    task = detection_grid(config)
    detection = detect(DetectConfig(task=task, **common), out / "detect", execution)
    targets = [code for code in config.languages if code != config.translate_from]
    runs = [detection.root]
    if targets:
        say("2/5 retrieval + translation")
        pairs = tuple(f"{config.translate_from}:{target}" for target in targets)
        translation = replace(detection_grid(config), languages=(), pairs=pairs)
        runs.append(detect(DetectConfig(task=translation, **common), out / "translation", execution).root)
    say("3/5 cross-language comparison")
    run_compare(runs, out / "compare", CompareConfig(seed=config.seed))
    say("4/5 ablation")
    ablation: RunStore = ablate(
        # Masked while decoding only (the official protocol), so the 13 head sets of a prompt share one
        # prefill and decode as one batch: 12 held-out prompts per language cost little more than 12.
        AblateConfig(
            run=str(detection.root),
            k=(2, 4),
            random_seeds=3,
            phases="decode",
            lengths=(800,),
            needles_per_cell=4,
            max_new_tokens=12,
            seed=config.seed,
        ),
        out / "ablate",
        execution,
    )
    say("5/5 report")
    return build_report([*runs, out / "compare", ablation.root], out / "report.html")
