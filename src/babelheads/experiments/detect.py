"""Retrieval-head detection: the NIAH task through the runner, recording, then aggregation and export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from babelheads.analysis.aggregate import AggregateSettings, aggregate
from babelheads.errors import TaskError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.head_masks import head_mask_gates, mask_digest
from babelheads.models import DEFAULT_MODEL, resolved_precision
from babelheads.official import export_official
from babelheads.probe import ProbeSettings
from babelheads.runner import Job, run_jobs
from babelheads.runs import RunStore
from babelheads.tasks.niah import NiahSettings, NiahTask

ANALYSIS_FILE = "analysis.json"


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

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.sink_tokens < 0:
            raise TaskError(
                f"top_k must be >= 1 and sink_tokens >= 0. Got {self.top_k} and {self.sink_tokens}."
            )
        if self.max_new_tokens < 1:
            raise TaskError(f"max_new_tokens must be at least 1. Got {self.max_new_tokens}.")

    @property
    def seed(self) -> int:
        return self.task.seed

    def identity(self) -> dict:
        """The config as the run's identity: everything but the analysis settings."""
        config = asdict(self)
        config.pop("analysis")
        if self.head_mask is None:  # runs made before masks existed keep their identity
            config.pop("head_mask")
        else:
            config["head_mask"] = {"file": self.head_mask, "digest": mask_digest(Path(self.head_mask))}
        return config


def detect(config: DetectConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) detection into ``out``; returns the store, with its derived tables written once
    every sample has finished (a shard that is not the last leaves them to the last)."""
    store = RunStore(out)
    task = NiahTask(config.task, config.analysis.success_threshold)
    spec = {
        "kind": "detect",
        "config": config.identity(),
        "data": task.identity(),
        "precision": resolved_precision(config.dtype, execution.device),
    }
    store.check_compatible(spec, ignore=("model",))
    if store.exists():
        store.validate()
    if not (store.exists() and set(task.sample_ids()) <= store.finished()):
        loaded = execution.load(
            config.model, config.dtype, chat={"auto": None, "chat": True, "plain": False}[config.task.prompt]
        )
        spec = {**spec, "model": loaded.identity}
        store.check_compatible(spec)
        samples = task.build(loaded)
        store.create(
            spec, config.seed, {"layout": asdict(loaded.layout), "analysis": asdict(config.analysis)}
        )
        settings = execution.run_settings(
            config.max_new_tokens, ProbeSettings(config.top_k, config.sink_tokens)
        )
        gates = head_mask_gates(config.head_mask, loaded.layout)
        jobs = [Job(sample.sample_id, sample, gates) for sample in samples]
        run_jobs(store, loaded, jobs, task.score, settings, execution.progress, "detect")
    if set(task.sample_ids()) <= store.finished():
        finalize(store, config.analysis)
    return store


def finalize(store: RunStore, settings: AggregateSettings) -> list[str]:
    """Write the aggregated tables and official score files for ``settings``; returns the notes."""
    samples, heads = store.table("samples"), store.table("head_scores")
    scores, kv_scores, notes = aggregate(samples, heads, settings)
    store.write_derived("scores", scores)
    store.write_derived("kv_scores", kv_scores)
    export_official(store, samples, heads, settings)
    store.write_json(ANALYSIS_FILE, {**asdict(settings), "notes": notes})
    return notes


def recorded_analysis(store: RunStore) -> tuple[AggregateSettings, list[str]]:
    """The analysis settings a run's score tables were last written with, and their notes."""
    path = store.root / ANALYSIS_FILE
    recorded = json.loads(path.read_text()) if path.exists() else store.manifest().get("analysis", {})
    notes = list(recorded.pop("notes", []))
    return AggregateSettings(**recorded), notes
