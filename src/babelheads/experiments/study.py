"""The embedded default job: detect -> retrieval + translation -> compare -> ablate -> report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.runs import RunStore


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
    from babelheads.report.html import build_report

    common = {"model": config.model, "seed": config.seed, "dtype": config.dtype}
    say("1/5 detection")
    detection = detect(DetectConfig(languages=config.languages, **common), out / "detect", device, progress)
    targets = [code for code in config.languages if code != config.translate_from]
    runs = [detection.root]
    if targets:
        say("2/5 retrieval + translation")
        pairs = tuple(f"{config.translate_from}:{target}" for target in targets)
        runs.append(detect(DetectConfig(pairs=pairs, **common), out / "translation", device, progress).root)
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
    return build_report([*runs, ablation.root], out / "report.html")
