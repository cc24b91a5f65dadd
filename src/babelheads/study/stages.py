"""The study's stages: each one runs (or resumes) the runs of one part of the mission, at the fixed
places under the study's directory it declares. A stage reads the runs of the stages it ``needs``
from there, so any stage can be run alone once those exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from babelheads.analysis.head_probes import ProbeSettings
from babelheads.data.controls import write_copies
from babelheads.errors import BabelheadsError
from babelheads.execution import Execution
from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.adapt import AdaptConfig, adapt
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.compress import CompressConfig, compress
from babelheads.experiments.detect import DetectConfig, detect_together
from babelheads.experiments.dynamic import DynamicAnalysis, DynamicConfig, dynamic
from babelheads.experiments.dynamic_ablate import DynamicAblateConfig, dynamic_ablate
from babelheads.experiments.importance import ImportanceConfig, importance
from babelheads.experiments.language_tests import LanguageTestConfig, language_test
from babelheads.experiments.rag import RagConfig, rag
from babelheads.rag.selections import POLICIES, SELECTIONS
from babelheads.study.config import StudyConfig
from babelheads.study.profiles import Profile
from babelheads.tasks.lm_texts import TextSettings
from babelheads.tasks.niah import NiahSettings


@dataclass(frozen=True)
class Context:
    """What every stage reads: the study's settings, its directory and how runs execute."""

    config: StudyConfig
    profile: Profile
    out: Path
    execution: Execution

    def run(self, name: str) -> Path:
        """Where the run ``name`` of this study lives (absolute: the same identity however --out is
        spelled)."""
        return (self.out / name).resolve()

    @property
    def held_out_seed(self) -> int:
        """The haystacks that test heads are drawn with another seed than the ones that chose them."""
        return self.config.seed + 1


@dataclass(frozen=True)
class Stage:
    """name : what --only and --skip take. title : what the stage line says. needs : the stages whose
    runs it reads. runs : the run directories it writes, under the study's directory."""

    name: str
    title: str
    needs: tuple[str, ...]
    runs: tuple[str, ...]
    execute: Callable[[Context], None]


def detection_grid(config: StudyConfig, profile: Profile) -> NiahSettings:
    """The study's NIAH grid in every language (the profile's lengths, depths and needles per cell)."""
    return NiahSettings(languages=config.languages, seed=config.seed, **profile.detection)


def _detect_config(context: Context, task: NiahSettings, hidden_states: bool = False) -> DetectConfig:
    config = context.config
    return DetectConfig(
        model=config.model,
        task=task,
        dtype=config.dtype,
        hidden_states=hidden_states,
        **context.profile.detect,
    )


def _detection(context: Context, prefix: str = "", data: Path | None = None) -> None:
    """Detection in every language and retrieval + translation from one language into the others,
    decoded together: a translation prompt is its source language's detection prompt up to the
    question, so that part is prefilled once for both."""
    config = context.config
    grid = replace(detection_grid(config, context.profile), data_dir=str(data) if data else None)
    # Each step's hidden state is recorded too: the dynamic stage analyses these samples.
    runs = [(_detect_config(context, grid, hidden_states=data is None), context.run(prefix + "detect"))]
    if _targets(config):
        pairs = tuple(f"{config.translate_from}:{target}" for target in _targets(config))
        translation = replace(grid, languages=(), pairs=pairs)
        runs.append((_detect_config(context, translation), context.run(prefix + "translation")))
    detect_together(runs, context.execution)


def _targets(config: StudyConfig) -> list[str]:
    return [code for code in config.languages if code != config.translate_from]


def _comparison(context: Context, prefix: str = "") -> None:
    runs = [context.run(prefix + "detect")]
    if _targets(context.config):
        runs.append(context.run(prefix + "translation"))
    run_compare(runs, context.run(prefix + "compare"), CompareConfig(seed=context.config.seed))


def _ablation(context: Context, prefix: str = "", control: bool = False) -> None:
    config = AblateConfig(
        run=str(context.run(prefix + "detect")),
        seed=context.config.seed,
        control=control,
        **context.profile.ablate,
    )
    ablate(config, context.run(prefix + "ablate"), context.execution)


def _chain_of_thought(context: Context) -> None:
    config = AblateConfig(
        run=str(context.run("detect")),
        task="cot",
        head_sets=("top", "random"),
        seed=context.config.seed,
        **context.profile.cot,
    )
    ablate(config, context.run("cot"), context.execution)


def _importance(context: Context) -> None:
    config = context.config
    texts = TextSettings(
        languages=config.lahis_languages or context.profile.lahis_languages,
        seed=config.seed,
        **context.profile.importance_texts,
    )
    importance(
        ImportanceConfig(model=config.model, texts=texts, dtype=config.dtype),
        context.run("importance"),
        context.execution,
    )


def _language_test(context: Context, experiment: str, control: bool = False) -> None:
    config = LanguageTestConfig(
        heads=str(context.run("importance")),
        experiment=experiment,
        detect=str(context.run("detect")) if experiment == "retrieval" else None,
        seed=context.config.seed,
        control=control,
        **context.profile.language_tests,
    )
    name = f"lt-{experiment}" + ("-control" if control else "")
    language_test(config, context.run(name), context.execution)


def _language_tests(context: Context) -> None:
    """Every experiment, each its own run: one that cannot run (e.g. a language without specific
    heads) is named at the end and the others still run."""
    _each(
        [
            (experiment, lambda experiment=experiment: _language_test(context, experiment))
            for experiment in context.profile.experiments
        ]
    )


def _adaptation(context: Context) -> None:
    config = AdaptConfig(
        heads=str(context.run("importance")),
        language=context.config.languages[0],
        seed=context.config.seed,
        **context.profile.adapt,
    )
    adapt(config, context.run("adapt"), context.execution)


def _dynamic_heads(context: Context) -> None:
    seed = context.config.seed
    analysis = DynamicAnalysis(probe=ProbeSettings(seed=seed, **context.profile.probe), seed=seed)
    config = DynamicConfig(recording=str(context.run("detect")), analysis=analysis)
    dynamic(config, context.run("dynamic"), context.execution)


def _held_out(context: Context, overrides: dict, **fixed: object) -> NiahSettings:
    settings = {"languages": context.config.languages, "seed": context.held_out_seed, **fixed, **overrides}
    return NiahSettings(**settings)


def _dynamic_ablation(context: Context, control: bool = False) -> None:
    niah = _held_out(context, dict(context.profile.dynamic_ablate_niah), needles="magic")
    config = DynamicAblateConfig(
        heads=str(context.run("dynamic")),
        niah=niah,
        dtype=context.config.dtype,
        seed=context.config.seed,
        control=control,
        **context.profile.dynamic_ablate,
    )
    name = "dynamic-ablate" + ("-control" if control else "")
    dynamic_ablate(config, context.run(name), context.execution)


def _retrieval_augmented(context: Context) -> None:
    config = RagConfig(
        heads=str(context.run("dynamic")),
        languages=context.config.languages,
        # the loop's selections, the budget-matched question baseline and the random-retriever control
        selections=(*SELECTIONS, *POLICIES),
        dtype=context.config.dtype,
        seed=context.config.seed,
        **context.profile.rag,
    )
    rag(config, context.run("rag"), context.execution)


def _compression(context: Context, control: bool = False) -> None:
    config = CompressConfig(
        heads=str(context.run("dynamic")),
        niah=_held_out(context, dict(context.profile.compress_niah)),
        dtype=context.config.dtype,
        seed=context.config.seed,
        control=control,
        **context.profile.compress,
    )
    compress(config, context.run("compress" + ("-control" if control else "")), context.execution)


def _controls(context: Context) -> None:
    """The negative controls: the retrieval study on copies of one language under the others' codes
    (with random heads as 'top'), and each family's own control run; one that cannot run (its family's
    stage did not) is named at the end and the others still run."""
    config = context.config
    data = write_copies(config.translate_from, _targets(config), context.run("control") / "data")
    pieces: list[tuple[str, Callable[[], None]]] = [
        ("detect", lambda: _detection(context, "control/", data)),
        ("compare", lambda: _comparison(context, "control/")),
        ("ablate", lambda: _ablation(context, "control/", control=True)),
        ("lt-ppl", lambda: _language_test(context, "ppl", control=True)),
        ("dynamic-ablate", lambda: _dynamic_ablation(context, control=True)),
        ("compress", lambda: _compression(context, control=True)),
    ]
    _each(pieces)


def _each(pieces: list[tuple[str, Callable[[], None]]]) -> None:
    """Run every piece; the ones that could not run are named in one error at the end."""
    failed = []
    for name, piece in pieces:
        try:
            piece()
        except BabelheadsError as error:
            failed.append(f"{name}: {error}")
    if failed:
        raise BabelheadsError(f"{len(failed)} of {len(pieces)} failed; " + " | ".join(failed))


def _lt_runs(experiments: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"lt-{experiment}" for experiment in experiments)


def stages(config: StudyConfig, profile: Profile) -> list[Stage]:
    """Every stage of the study in order (the report last; with ``config.control``, the controls
    before it)."""
    detection_runs = ("detect", "translation") if _targets(config) else ("detect",)
    listed = [
        Stage("detect", "detection, and retrieval + translation", (), detection_runs, _detection),
        Stage("compare", "cross-language comparison", ("detect",), ("compare",), _comparison),
        Stage("ablate", "masking top vs random heads", ("detect",), ("ablate",), _ablation),
        Stage("cot", "chain of thought under masking", ("detect",), ("cot",), _chain_of_thought),
        Stage("importance", "LAHIS head importance", (), ("importance",), _importance),
        Stage(
            "language-tests",
            "LAHIS experiments",
            ("importance", "detect"),
            _lt_runs(profile.experiments),
            _language_tests,
        ),
        Stage("adapt", "soft head mask", ("importance",), ("adapt",), _adaptation),
        Stage("dynamic", "dynamic heads and probes", ("detect",), ("dynamic",), _dynamic_heads),
        Stage("dynamic-ablate", "dynamic ablation", ("dynamic",), ("dynamic-ablate",), _dynamic_ablation),
        Stage("rag", "dynamic RAG", ("dynamic",), ("rag",), _retrieval_augmented),
        Stage("compress", "KV-cache compression", ("dynamic",), ("compress",), _compression),
    ]
    if config.control:
        control_runs = ("control/compare", "control/ablate", "lt-ppl-control", "dynamic-ablate-control")
        listed.append(
            Stage(
                "controls",
                "negative controls",
                (),
                (*control_runs, "compress-control"),
                _controls,
            )
        )
    return listed
