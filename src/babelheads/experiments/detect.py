"""Retrieval-head detection: the NIAH task through the runner, recording, then aggregation and export."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from babelheads.analysis.aggregate import AggregateSettings, aggregate
from babelheads.errors import TaskError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import (
    Experiment,
    ModelChoice,
    Prepared,
    run_experiment,
    run_identity,
    run_together,
)
from babelheads.head_masks import check_mask_fits, head_mask_gates, mask_digest
from babelheads.models import DEFAULT_MODEL, LoadedModel, config_layout
from babelheads.official import export_official
from babelheads.probe import ProbeSettings
from babelheads.runner import Job
from babelheads.runner.jobs import JobSet, run_job_sets
from babelheads.runs import RunStore
from babelheads.sources import ANALYSIS_FILE
from babelheads.tasks.niah import NiahSettings, NiahTask


@dataclass(frozen=True)
class DetectConfig:
    """What decides a detection run's numbers (the device does not, so it is not here; the dtype it
    resolves to is part of the run's identity).

    analysis : how stored per-sample scores are aggregated; not part of the run's identity, so changing
    it (``babelheads summary RUN --score official``) re-aggregates without re-running.
    """

    model: str = DEFAULT_MODEL
    task: NiahSettings = field(default_factory=NiahSettings)
    max_new_tokens: int = 32
    top_k: int = 4
    sink_tokens: int = 0
    dtype: str = "auto"
    analysis: AggregateSettings = field(default_factory=AggregateSettings)
    head_mask: str | None = None
    """A head-mask file (e.g. from ``babelheads adapt``) applied in every forward pass."""
    hidden_states: bool = False
    """Also record each step's final hidden state, so that a dynamic run can analyse this recording
    (``DynamicConfig.recording``) instead of decoding the samples again."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.sink_tokens < 0:
            raise TaskError(
                f"top_k must be >= 1 and sink_tokens >= 0. Got {self.top_k} and {self.sink_tokens}."
            )
        if self.max_new_tokens < 1:
            raise TaskError(f"max_new_tokens must be at least 1. Got {self.max_new_tokens}.")
        if self.head_mask is not None:
            # The model's config gives its shape without its weights: a mask of another model is
            # refused before the run directory exists (then a corrected mask resumes cleanly).
            check_mask_fits(self.head_mask, config_layout(self.model))

    @property
    def seed(self) -> int:
        return self.task.seed

    def identity(self) -> dict:
        """The config as the run's identity: everything but the analysis settings."""
        config = asdict(self)
        config.pop("analysis")
        if not self.hidden_states:  # runs made before hidden states could be recorded keep their identity
            config.pop("hidden_states")
        if self.head_mask is None:  # likewise for runs made before masks existed
            config.pop("head_mask")
        else:
            config["head_mask"] = {"file": self.head_mask, "digest": mask_digest(Path(self.head_mask))}
        return config


class Detection(Experiment):
    """NIAH samples decoded with the instrument recording every head's attention peaks."""

    kind = "detect"

    def __init__(self, config: DetectConfig):
        self.config = config
        self.task = NiahTask(config.task, config.analysis.success_threshold)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        return run_identity(self.config.identity(), self.task.identity(), self.config.dtype, execution)

    def model(self) -> ModelChoice:
        chat = {"auto": None, "chat": True, "plain": False}[self.config.task.prompt]
        return ModelChoice(self.config.model, self.config.dtype, chat)

    def part_ids(self) -> list[str]:
        return self.task.sample_ids()

    def prepare(self, loaded: LoadedModel) -> Prepared:
        if self.config.head_mask is not None:  # a model whose config was unreadable before it loaded
            check_mask_fits(self.config.head_mask, loaded.layout)
        facts = {"layout": asdict(loaded.layout), "analysis": asdict(self.config.analysis)}
        return Prepared(self.task.sample_ids(), facts, self.task.build(loaded))

    def job_set(
        self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution
    ) -> JobSet:
        config = self.config
        settings = execution.run_settings(
            config.max_new_tokens, ProbeSettings(config.top_k, config.sink_tokens)
        )
        settings = replace(settings, hidden_states=config.hidden_states)
        gates = head_mask_gates(config.head_mask, loaded.layout)
        jobs = [Job(sample.sample_id, sample, gates) for sample in prepared.state]
        return JobSet(store, jobs, self.task.score, settings, "detect")

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        run_job_sets([self.job_set(store, loaded, prepared, execution)], loaded, execution.progress, "detect")

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config.analysis)


def detect(config: DetectConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) detection into ``out``; returns the store, with its derived tables written once
    every sample has finished (a shard that is not the last leaves them to the last)."""
    return run_experiment(Detection(config), out, execution)


def detect_together(
    runs: Sequence[tuple[DetectConfig, Path]], execution: Execution = DEFAULT_EXECUTION
) -> list[RunStore]:
    """Several detection runs of one model decoded in one walk over their prompts, so the prompts
    they share up to the question (detection and retrieval + translation on the same haystacks) are
    prefilled once; each run is the same as if run alone with :func:`detect`."""
    return run_together([(Detection(config), out) for config, out in runs], execution)


def finalize(store: RunStore, settings: AggregateSettings) -> list[str]:
    """Write the aggregated tables and official score files for ``settings``; returns the notes."""
    samples, heads = store.table("samples"), store.table("head_scores")
    scores, kv_scores, notes = aggregate(samples, heads, settings)
    store.write_derived("scores", scores)
    store.write_derived("kv_scores", kv_scores)
    export_official(store, samples, heads, settings)
    store.write_json(ANALYSIS_FILE, {**asdict(settings), "notes": notes})
    return notes
