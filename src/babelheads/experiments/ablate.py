"""Masking sets of heads chosen from a detection run, on held-out NIAH samples or word problems."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from babelheads.analysis.ablation import HEAD_SETS, HeadSet, effects, select_head_sets
from babelheads.analysis.ablation_claims import ablation_claims
from babelheads.analysis.aggregate import completed
from babelheads.analysis.claims import Context, claims_tables
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, source_model
from babelheads.head_masks import MASK_METHODS as METHODS
from babelheads.head_masks import check_mask_for_run, head_mask_gates, mask_digest
from babelheads.models import LoadedModel, resolved_precision
from babelheads.probe import HeadGates
from babelheads.runner import Job, run_jobs
from babelheads.runs import RunStore
from babelheads.sources import open_source
from babelheads.tasks.cot import CotSettings, CotTask
from babelheads.tasks.niah import NiahSettings, NiahTask

PHASE_CHOICES = {"all": ("prefill", "decode"), "decode": ("decode",)}
TASKS = ("niah", "cot")
HOLDOUTS = ("seed", "needles", "none")


@dataclass(frozen=True)
class AblateConfig:
    """run : the detection run whose scores pick the heads. task : 'niah' (held-out needle tests) or
    'cot' (word problems, reasoning and direct prompts). method : 'gate' zeroes the head's output
    (before o_proj); 'uniform' makes it attend uniformly (the official code's masking; decode only).
    phases : 'all' masks prefill and decoding, 'decode' decoding only, from the query of the last
    prompt token on (as the official code). holdout (niah) : 'seed' evaluates on haystacks of another
    seed, 'needles' on needles the detection run never used, 'none' on the detection run's own grid
    cells; the manifest records what the two share. cot_tokens : the reasoning prompt's step limit;
    cot_prompt : 'chat' or 'plain' for the word problems ('': the detection run's). control : the
    masking claims' negative control, 'top' heads replaced by random non-retrieval heads."""

    run: str
    task: str = "niah"
    languages: tuple[str, ...] = ()
    k: tuple[int, ...] = (2, 4, 8)
    head_sets: tuple[str, ...] = HEAD_SETS
    random_seeds: int = 5
    method: str = "gate"
    phases: str = "all"
    threshold: float = 0.1
    lengths: tuple[int, ...] = (1000,)
    depths: tuple[float, ...] = (0.25, 0.5, 0.75)
    needle_kind: str = "all"
    needles_per_cell: int = 1
    holdout: str = "seed"
    problems: int = 30
    cot_tokens: int = 96
    cot_prompt: str = ""
    max_new_tokens: int = 16
    success_threshold: float = 0.5
    replicates: int = 200
    seed: int = 0
    head_mask: str | None = None
    control: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BabelheadsError(f"Unknown task {self.task!r}. Use one of: {', '.join(TASKS)}.")
        if self.method not in METHODS:
            raise BabelheadsError(f"Unknown method {self.method!r}. Use gate or uniform.")
        if self.phases not in PHASE_CHOICES:
            raise BabelheadsError(f"Unknown phases {self.phases!r}. Use all or decode.")
        if self.method == "uniform" and self.phases != "decode":
            raise BabelheadsError("Uniform masking applies while decoding only. Add --phases decode.")
        if self.random_seeds < 1:
            raise BabelheadsError(f"random_seeds must be at least 1. Got {self.random_seeds}.")
        if self.head_mask is not None and (self.method, self.phases) != ("gate", "all"):
            raise BabelheadsError(
                "A --head-mask scales heads in every phase, so it combines only with --method gate "
                "--phases all."
            )
        if self.cot_tokens < 1:
            raise BabelheadsError(f"--cot-tokens must be at least 1. Got {self.cot_tokens}.")
        if self.cot_prompt not in ("", "auto", "chat", "plain"):
            raise BabelheadsError(f"Unknown --cot-prompt {self.cot_prompt!r}. Use auto, chat or plain.")
        if self.holdout not in HOLDOUTS:
            raise BabelheadsError(f"Unknown holdout {self.holdout!r}. Use one of: {', '.join(HOLDOUTS)}.")
        if not math.isfinite(self.threshold):
            raise BabelheadsError(f"--threshold must be a finite score, e.g. 0.1. Got {self.threshold}.")
        if not (math.isfinite(self.success_threshold) and 0 <= self.success_threshold < 1):
            raise BabelheadsError(f"success_threshold must lie in [0, 1). Got {self.success_threshold}.")
        if self.replicates < 1:
            raise BabelheadsError(f"replicates must be at least 1 (bootstrap draws). Got {self.replicates}.")
        if self.head_mask is not None:  # the detection run's manifest knows the model's shape
            check_mask_for_run(self.head_mask, self.run)


def evaluation_task(
    config: AblateConfig, detection: dict, detected: pd.DataFrame
) -> tuple[NiahTask | CotTask, dict]:
    """The task to evaluate, in the detection run's data, and what it shares with the detection samples."""
    settings = detection["config"]["task"]
    languages = config.languages or tuple(settings["languages"])
    if config.task == "cot":
        prompt = config.cot_prompt or settings["prompt"]
        task = CotTask(
            CotSettings(
                languages,
                config.problems,
                data_dir=settings["data_dir"],
                prompt=prompt,
                cot_tokens=config.cot_tokens,
            )
        )
        return task, {"holdout": "different task (word problems)"}
    used = sorted(set(detected["needle_id"])) if "needle_id" in detected else []
    seed = config.seed + 1 if config.holdout == "seed" and config.seed == settings["seed"] else config.seed
    niah = NiahSettings(
        languages=languages,
        corpus=settings["corpus"],
        needles=settings["needles"],
        data_dir=settings["data_dir"],
        lengths=config.lengths,
        depths=config.depths,
        needles_per_cell=config.needles_per_cell,
        needle_kind=config.needle_kind,
        prompt=settings["prompt"],
        seed=seed,
    )
    if config.holdout == "needles":
        unused = _unused_needles(niah, used)
        niah = NiahSettings(**{**asdict(niah), "needle_ids": tuple(unused)})
    task = NiahTask(niah, config.success_threshold)
    needles = sorted({cell.needle.id for cell in task.cells})
    # A prompt repeats a detection prompt only with the same seed (the haystack order) and cell.
    detected_ids = set(detected["sample_id"]) if "sample_id" in detected else set()
    identical = len(set(task.sample_ids()) & detected_ids) if seed == settings["seed"] else 0
    return task, {
        "holdout": config.holdout,
        "evaluation_seed": seed,
        "detection_seed": settings["seed"],
        "needles_shared": sorted(set(needles) & set(used)),
        "needles_held_out": sorted(set(needles) - set(used)),
        "samples_identical_to_detection": identical,
    }


def _identity(config: AblateConfig) -> dict:
    identity = asdict(config)
    if config.head_mask is None:  # runs made before masks existed keep their identity
        identity.pop("head_mask")
    else:
        identity["head_mask"] = {"file": config.head_mask, "digest": mask_digest(Path(config.head_mask))}
    for name, default in (("control", False), ("cot_tokens", 96), ("cot_prompt", "")):
        if getattr(config, name) == default:  # runs made before these settings existed keep their identity
            identity.pop(name)
    return identity


def _unused_needles(settings: NiahSettings, used: list[str]) -> list[str]:
    from babelheads.data.needles import load_needles

    source = settings.language_pairs()[0][0]
    kind = settings.needle_kind
    all_ids = [
        needle.id
        for needle in load_needles(settings.needles, source, settings.root)
        if kind in ("all", needle.kind)
    ]
    unused = [needle for needle in all_ids if needle not in set(used)]
    if not unused:
        raise BabelheadsError(
            "The detection run used every needle, so none is held out. Use --holdout seed, or detect with "
            "fewer needles (--needles-per-cell 1 on a smaller grid)."
        )
    return unused


class Ablation(Experiment):
    """Sets of heads chosen from a detection run, masked while the model answers held-out samples; one
    part per (head set, sample)."""

    kind = "ablate"
    analysis_fields = ("replicates",)

    def __init__(self, config: AblateConfig):
        self.config = config
        self.detection = open_source(config.run, ("detect",), "RUN")
        spec = self.detection.manifest["spec"]
        self.task, self.overlap = evaluation_task(
            config, spec, completed(self.detection.store.table("samples"))
        )
        languages = list(config.languages or spec["config"]["task"]["languages"])
        self.sets = select_head_sets(
            self.detection.store.derived("scores"),
            languages,
            list(config.k),
            list(config.head_sets),
            config.random_seeds,
            config.threshold,
            config.seed,
            config.control,
        )
        # sets with the same heads (an empty agnostic set and 'none') run once, on the union of the
        # prompts they are masked on (a per-language set on its language's only)
        languages_of = self.task.sample_languages()
        self.unique: dict[str, HeadSet] = {}
        self.prompts: dict[str, set[str]] = {}
        for head_set in self.sets:
            self.unique.setdefault(head_set.mask_id, head_set)
            chosen = {i for i, code in languages_of.items() if head_set.language in ("", code)}
            self.prompts.setdefault(head_set.mask_id, set()).update(chosen)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        spec = self.detection.manifest["spec"]
        identity = _identity(self.config)
        for name in self.analysis_fields:
            identity.pop(name)
        return {
            "config": identity,
            "data": self.task.identity(),
            "precision": spec.get("precision", resolved_precision(spec["config"]["dtype"], execution.device)),
            "detection": self.detection.digest,
        }

    def model(self) -> ModelChoice:
        return source_model(self.detection)

    def part_ids(self) -> list[str]:
        return [
            f"{mask}--{sample_id}"
            for mask in self.unique
            for sample_id in self.task.sample_ids()
            if sample_id in self.prompts[mask]
        ]

    def prepare(self, loaded: LoadedModel) -> Prepared:
        return Prepared(self.part_ids(), {"overlap_with_detection": self.overlap}, self.task.build(loaded))

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        jobs = [
            Job(
                f"{mask_id}--{sample.sample_id}",
                sample,
                _gates(loaded.layout, head_set, self.config),
                (("mask_id", mask_id),),
            )
            for mask_id, head_set in self.unique.items()
            for sample in prepared.state
            if sample.sample_id in self.prompts[mask_id]
        ]
        settings = execution.run_settings(self.config.max_new_tokens)
        run_jobs(store, loaded, jobs, self.task.score, settings, execution.progress, "ablate")

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config, self.sets, Context(self.detection.model_name, str(store.root)))


def ablate(config: AblateConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) the ablation into ``out``. Decode-only masks share each prompt's prefill: every
    head set of a prompt decodes from one prefill, in one batch."""
    return run_experiment(Ablation(config), out, execution)


def _gates(layout, head_set: HeadSet, config: AblateConfig) -> HeadGates | None:
    base = head_mask_gates(config.head_mask, layout)
    if not head_set.heads:
        return base
    gates = HeadGates.mask(layout, head_set.heads, PHASE_CHOICES[config.phases], METHODS[config.method])
    if base is None:
        return gates
    return HeadGates(base.values * gates.values, gates.phases, gates.mode)


def finalize(store: RunStore, config: AblateConfig, sets: list[HeadSet], context: Context) -> None:
    table = pd.DataFrame(
        [
            {
                "name": s.name,
                "k": s.k,
                "seed": s.seed,
                "count": len(s.heads),
                "heads": " ".join(map(str, s.heads)),
                "mask_id": s.mask_id,
                "language": s.language,
            }
            for s in sets
        ]
    )
    store.write_derived("head_sets", table)
    samples = completed(store.table("samples"))
    result = effects(samples, table, config.replicates, config.seed)
    result["task"] = config.task
    result["method"] = config.method
    result["phases"] = config.phases
    store.write_table("ablation", result)
    claims = claims_tables(
        ablation_claims(samples, table, config.task, config.replicates, config.seed, context)
    )
    for name, frame in claims.items():
        store.write_table(name, frame)
