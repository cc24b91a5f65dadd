"""The experiment contract: what every kind of run declares, and the one lifecycle that runs them all.

A kind of run is a subclass of :class:`Experiment` that says

- its ``kind`` and its run identity (``identity``: what decides its numbers) — never its analysis
  settings, so changing those re-analyses a finished run instead of refusing it;
- the model it runs (``model``), and the source runs it reads (opened and checked on construction,
  see :mod:`babelheads.sources`);
- its parts (``part_ids`` before the model loads when it can, else ``prepare`` names them);
- how its parts execute (``execute``) and how its tables are finalized (``finalize``).

:func:`run_experiment` does the rest, the same way for every kind: spec and two-phase identity (without
the model, then with it), validation of an existing directory, the model loaded and checked against
the spec and every source run, the directory created only once all of that passed, the parts not yet
finished executed, and the tables finalized once every part is. Resuming (or re-finalizing) a run written
with other package versions warns once, naming them (:func:`babelheads.runs.warn_if_versions_differ`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.kinds import FINALIZED
from babelheads.models import LoadedModel, resolved_precision
from babelheads.runner.jobs import JobSet, run_job_sets
from babelheads.runs import RunStore, warn_if_versions_differ
from babelheads.sources import Source


@dataclass(frozen=True)
class ModelChoice:
    """The model a run loads. ``identity`` : the identity it must have when it is known before loading
    (the model of the source run whose heads it tests); None when the run's own model decides it."""

    name: str
    dtype: str
    chat: bool | None = None
    identity: dict | None = None
    source: str = ""
    """The run whose model it is, for the message when the files changed since."""


@dataclass
class Prepared:
    """What ``prepare`` found with the model loaded: the run's parts (the order workers shard them
    in), facts for the manifest (recorded, never compared), and whatever ``execute`` needs."""

    parts: list[str]
    facts: dict = field(default_factory=dict)
    state: object = None


class Experiment(ABC):
    """One kind of run. Subclasses are constructed from their validated config: any refusal (a bad
    value, a source run of the wrong kind, unfinished, of another seed) happens there, before anything
    is loaded or written."""

    kind: ClassVar[str]
    analysis_fields: ClassVar[tuple[str, ...]] = ()
    """Config fields that are analysis settings: never part of the identity. Listed so that a run
    written when they still were (an older version) resumes instead of being refused."""

    @property
    @abstractmethod
    def seed(self) -> int:
        """The seed recorded in the manifest (the one that draws the run's samples)."""

    @abstractmethod
    def identity(self, execution: Execution) -> dict:
        """The spec's entries besides ``kind`` and ``model``: config (no analysis settings), data
        digests, precision, and the digests of the source runs."""

    @abstractmethod
    def model(self) -> ModelChoice | None:
        """The model the parts run on; None for a run that only analyses its sources' tables (its
        identity then names the model)."""

    def check_execution(self, execution: Execution) -> None:
        """Refuse an execution setting this kind cannot honour (rather than ignore it); nothing is
        loaded or written yet. Every setting is honoured unless a kind says otherwise."""
        return None

    def sources(self) -> Sequence[Source]:
        """The runs this one reads; each must be of the loaded model."""
        return ()

    def part_ids(self) -> list[str] | None:
        """Every part's id without a model (a finished run is recognised before any model loads);
        None when only ``prepare`` can name them (the manifest then records them)."""
        return None

    @abstractmethod
    def prepare(self, loaded: LoadedModel | None) -> Prepared:
        """Build what the parts need with the model loaded; may still refuse (nothing is written yet)."""

    @abstractmethod
    def execute(
        self, store: RunStore, loaded: LoadedModel | None, prepared: Prepared, execution: Execution
    ) -> None:
        """Compute the parts of ``prepared`` not yet finished (through :mod:`babelheads.runner.parts`)."""

    def job_set(
        self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution
    ) -> JobSet | None:
        """The parts as plain decode jobs, which :func:`run_together` may decode in one walk with
        other runs' (sharing prompt prefixes); None (the default) when ``execute`` must run them."""
        return None

    @abstractmethod
    def finalize(self, store: RunStore) -> None:
        """Write the derived tables of a run whose every part has finished, with this config's analysis
        settings."""


def run_experiment(experiment: Experiment, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) ``experiment`` into ``out``; returns the store. Its derived tables are written
    once every part has finished (a shard that is not the last leaves them to the last)."""
    return run_together([(experiment, out)], execution)[0]


def run_together(
    runs: Sequence[tuple[Experiment, Path]], execution: Execution = DEFAULT_EXECUTION
) -> list[RunStore]:
    """Run (or resume) several experiments, each into its own directory; returns their stores.

    Each run's identity, checks, resumption and finalization are its own, as if run alone. What is
    shared: a model is loaded once for the runs that use it, and the runs whose parts are plain decode
    jobs (:meth:`Experiment.job_set`) decode in one walk over all their prompts, so a prompt prefix
    two runs share (one haystack asked for its needle, then for the needle's translation) is
    prefilled once. Every run is checked before any executes, so a refusal writes nothing.
    """
    models: dict[tuple, LoadedModel] = {}
    opened = [_open(experiment, Path(out), execution, models) for experiment, out in runs]
    walks: dict[tuple, list[JobSet]] = {}  # by model
    for run in opened:
        if run.prepared is None:
            continue
        run.store.create(run.spec, run.experiment.seed, {**run.prepared.facts, "parts": run.prepared.parts})
        job_set = run.experiment.job_set(run.store, run.loaded, run.prepared, execution)
        if job_set is None or run.loaded is None:
            run.experiment.execute(run.store, run.loaded, run.prepared, execution)
        else:
            walks.setdefault(run.model_key, []).append(job_set)
    for key, sets in walks.items():
        description = " + ".join(job_set.store.root.name for job_set in sets) if len(sets) > 1 else ""
        run_job_sets(sets, models[key], execution.progress, description or sets[0].description)
    for run in opened:
        if finished(run.store, run.experiment):
            run.experiment.finalize(run.store)
            run.store.write_json(FINALIZED, {"parts": len(run.store.finished())})
    return [run.store for run in opened]


@dataclass
class _Opened:
    """A run checked and ready: ``prepared`` is None when every part had already finished."""

    experiment: Experiment
    store: RunStore
    spec: dict
    loaded: LoadedModel | None = None
    prepared: Prepared | None = None
    model_key: tuple = ()


def _open(
    experiment: Experiment, out: Path, execution: Execution, models: dict[tuple, LoadedModel]
) -> _Opened:
    """Check ``experiment`` against ``out`` (and, unless it has finished, against its loaded model and
    sources) and prepare its parts; nothing is written."""
    experiment.check_execution(execution)
    store = RunStore(out)
    choice = experiment.model()
    spec = {"kind": experiment.kind, **experiment.identity(execution)}
    if choice is not None and choice.identity is not None:
        spec["model"] = choice.identity
    loose = experiment.analysis_fields
    store.check_compatible(spec, ignore=() if "model" in spec else ("model",), loose=loose)
    if store.exists():
        store.validate()
        # Resumed or re-finalized: warn once per run (not per part) if its package versions differ.
        warn_if_versions_differ(store)
    if finished(store, experiment):
        return _Opened(experiment, store, spec)
    loaded, key = None, ()
    if choice is not None:
        key = (choice.name, choice.dtype, choice.chat)
        if key not in models:
            models[key] = execution.load(choice.name, choice.dtype, chat=choice.chat)
        loaded = _checked(choice, models[key])
        spec["model"] = loaded.identity
        store.check_compatible(spec, loose=loose)
        for source in experiment.sources():
            source.require_model(loaded.identity)
    prepared = experiment.prepare(loaded)
    recorded = store.recorded_parts() if store.exists() else None
    if recorded is not None and recorded != prepared.parts:
        raise BabelheadsError(
            f"{store.root} holds a run of other parts than these settings give. Use another --out."
        )
    return _Opened(experiment, store, spec, loaded, prepared, key)


def run_identity(config: dict, data: dict, dtype: str, execution: Execution, **sources: object) -> dict:
    """The usual identity: the config (without analysis settings), the data's digests, the precision
    ``dtype`` resolves to on this device, and the digests of the source runs read (by name)."""
    return {
        "config": config,
        "data": data,
        "precision": resolved_precision(dtype, execution.device),
        **sources,
    }


def _checked(choice: ModelChoice, loaded: LoadedModel) -> LoadedModel:
    if choice.identity is not None and loaded.identity != choice.identity:
        raise BabelheadsError(
            f"The model loaded now differs from the one {choice.source} ran on ({loaded.identity}); "
            "its files changed since. Use the model that run used, or run it again."
        )
    return loaded


def source_model(source: Source) -> ModelChoice:
    """The model a source run ran on, which a run testing its heads must load unchanged."""
    config = source.manifest["spec"]["config"]
    return ModelChoice(config["model"], config["dtype"], identity=source.model, source=str(source.path))


def finished(store: RunStore, experiment: Experiment) -> bool:
    """Whether every part of the run has finished: the parts known without a model, else the ones its
    manifest recorded."""
    if not store.exists():
        return False
    parts = experiment.part_ids()
    if parts is None:
        parts = store.recorded_parts()
    return parts is not None and set(parts) <= store.finished()
