"""The embedded default job: detect -> retrieval + translation -> compare -> ablate -> report, and
with ``control`` the same on a copy of one language under the others' codes.

It sits above the experiments and the report: nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from babelheads.analysis.claims import with_controls
from babelheads.data.controls import write_copies
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
    control: bool = False
    """Also run the negative controls (copies of ``translate_from`` under the other languages' codes;
    'top' heads replaced by random ones) and fill the claims' control column."""


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
    steps = 5 + 4 * config.control
    runs = _retrieval_study(config, out, execution, say, steps, 0)
    if config.control:
        copies = [code for code in config.languages if code != config.translate_from]
        data = write_copies(config.translate_from, copies, out.resolve() / "control" / "data")
        controls = _retrieval_study(config, out / "control", execution, say, steps, 4, data, control=True)
        fill_controls(runs, controls)
    say(f"{steps}/{steps} report")
    return build_report(runs, out / "report.html")


def _retrieval_study(
    config: StudyConfig,
    out: Path,
    execution: Execution,
    say: Callable[[str], None],
    steps: int,
    done: int,
    data: Path | None = None,
    control: bool = False,
) -> list[Path]:
    """detect -> retrieval + translation -> compare -> ablate under ``out``; the run directories."""
    label = " (control: copies of " + config.translate_from + ")" if control else ""
    common = {"model": config.model, "dtype": config.dtype}
    grid = replace(detection_grid(config), data_dir=str(data) if data else None)
    say(f"{done + 1}/{steps} detection{label}")
    detection = detect(DetectConfig(task=grid, **common), out / "detect", execution)
    targets = [code for code in config.languages if code != config.translate_from]
    runs = [detection.root]
    if targets:
        say(f"{done + 2}/{steps} retrieval + translation{label}")
        pairs = tuple(f"{config.translate_from}:{target}" for target in targets)
        translation = replace(grid, languages=(), pairs=pairs)
        runs.append(detect(DetectConfig(task=translation, **common), out / "translation", execution).root)
    say(f"{done + 3}/{steps} cross-language comparison{label}")
    run_compare(runs, out / "compare", CompareConfig(seed=config.seed))
    say(f"{done + 4}/{steps} ablation{label}")
    ablation: RunStore = ablate(
        # Masked while decoding only (the official protocol), so the head sets of a prompt share one
        # prefill and decode as one batch: 12 held-out prompts per language cost little more than 12.
        AblateConfig(
            run=str(detection.root.resolve()),  # the same identity however --out is spelled
            k=(2, 4),
            random_seeds=8,  # the top set against the spread of 8 random sets (t, 7 df)
            phases="decode",
            lengths=(800,),
            needles_per_cell=4,
            max_new_tokens=12,
            seed=config.seed,
            control=control,
        ),
        out / "ablate",
        execution,
    )
    return [*runs, out / "compare", ablation.root]


def fill_controls(runs: list[Path], controls: list[Path]) -> None:
    """The claims of ``runs`` with their control column filled from the same claims on ``controls``."""
    found = [RunStore(path) for path in controls if (Path(path) / "claims.parquet").exists()]
    if not found:
        return
    control = pd.concat([store.derived("claims") for store in found], ignore_index=True)
    for path in runs:
        store = RunStore(path)
        if (store.root / "claims.parquet").exists():
            store.write_table("claims", with_controls(store.derived("claims"), control))
