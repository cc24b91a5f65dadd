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

    @abstractmethod
    def finalize(self, store: RunStore) -> None:
        """Write the derived tables of a run whose every part has finished, with this config's analysis
        settings."""


def run_experiment(experiment: Experiment, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) ``experiment`` into ``out``; returns the store. Its derived tables are written
    once every part has finished (a shard that is not the last leaves them to the last)."""
    experiment.check_execution(execution)
    store = RunStore(Path(out))
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
    if not finished(store, experiment):
        loaded = None if choice is None else _load(choice, execution)
        if loaded is not None:
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
        store.create(spec, experiment.seed, {**prepared.facts, "parts": prepared.parts})
        experiment.execute(store, loaded, prepared, execution)
    if finished(store, experiment):
        experiment.finalize(store)
        store.write_json(FINALIZED, {"parts": len(store.finished())})
    return store


def run_identity(config: dict, data: dict, dtype: str, execution: Execution, **sources: object) -> dict:
    """The usual identity: the config (without analysis settings), the data's digests, the precision
    ``dtype`` resolves to on this device, and the digests of the source runs read (by name)."""
    return {
        "config": config,
        "data": data,
        "precision": resolved_precision(dtype, execution.device),
        **sources,
    }


def _load(choice: ModelChoice, execution: Execution) -> LoadedModel:
    loaded = execution.load(choice.name, choice.dtype, chat=choice.chat)
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
