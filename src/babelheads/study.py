"""The embedded default job: detect -> retrieval + translation -> compare -> ablate -> report.

It sits above the experiments and the report: nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.report.html import build_report
from babelheads.runs import RunStore
from babelheads.tasks.niah import NiahSettings


@dataclass(frozen=True)
class StudyConfig:
    """One model, several languages: where each step's run goes is fixed under ``out``."""

    model: str = "gemma-3-270m"
    languages: tuple[str, ...] = ("en", "de", "zh")
    translate_from: str = "en"
    seed: int = 0
    dtype: str = "auto"


def run_study(
    config: StudyConfig,
    out: Path,
    device: str = "auto",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Run every step (each resumes if its run exists) and return the report's path."""
    common = {"model": config.model, "dtype": config.dtype}
    say("1/5 detection")
    task = NiahSettings(languages=config.languages, seed=config.seed)
    detection = detect(DetectConfig(task=task, **common), out / "detect", device, progress)
    targets = [code for code in config.languages if code != config.translate_from]
    runs = [detection.root]
    if targets:
        say("2/5 retrieval + translation")
        pairs = tuple(f"{config.translate_from}:{target}" for target in targets)
        translation = NiahSettings(pairs=pairs, seed=config.seed)
        runs.append(
            detect(DetectConfig(task=translation, **common), out / "translation", device, progress).root
        )
    say("3/5 cross-language comparison")
    run_compare(runs, out / "compare", CompareConfig(seed=config.seed))
    say("4/5 ablation")
    ablation: RunStore = ablate(
        # Sized for about five minutes on two CPU cores: short prompts, two needles per cell.
        AblateConfig(
            run=str(detection.root),
            k=(2, 4),
            random_seeds=2,
            lengths=(600,),
            needles_per_cell=2,
            max_new_tokens=12,
            seed=config.seed,
        ),
        out / "ablate",
        device,
        progress,
    )
    say("5/5 report")
    return build_report([*runs, out / "compare", ablation.root], out / "report.html")
