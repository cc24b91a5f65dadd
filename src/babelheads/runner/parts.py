"""The one executor of a run's parts, whatever a part computes (decoded rows, teacher-forced losses,
one forced step, a compressed cache, a trained mask): claim, shard, batch, skip with a reason, append,
resume. Experiments say what a batch of parts computes; this module decides which parts run and when.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from babelheads.errors import BabelheadsError
from babelheads.runs import RunStore
from babelheads.tasks.base import Skipped

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``: it takes one contiguous block of the run's parts (neighbours
    share prompt prefixes), so no two workers ever compute the same part."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise BabelheadsError(f"A shard I/N needs 0 <= I < N. Got {self.index}/{self.count}.")

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, _, count = text.partition("/")
        try:
            return cls(int(index), int(count))
        except ValueError:
            raise BabelheadsError(
                f"--shard reads I/N, e.g. 0/4 for the first of four workers. Got {text!r}."
            ) from None

    def takes(self, position: int, total: int) -> bool:
        return position * self.count // max(total, 1) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Part:
    """One unit of a run's work and of its resumption: ``part_id`` names its rows in the store;
    ``work`` is whatever the experiment computes it from (a sample, a window, a question, a plan).
    A part with ``skipped`` set (a sample that could not be built) is written as a skipped row with
    its reason, never computed."""

    part_id: str
    work: object
    skipped: Skipped | None = None

    @classmethod
    def of(cls, part_id: str, work: object) -> Part:
        """A part whose work may itself be a skipped sample."""
        return cls(part_id, work, work if isinstance(work, Skipped) else None)


Batches = Callable[[list[Part]], Iterable[list[Part]]]
"""Orders and groups the parts to run into batches (e.g. by shared prompt prefix, under a memory cap)."""


def in_batches_of(size: int) -> Batches:
    """Consecutive batches of ``size`` parts, in the given order."""

    def batches(parts: list[Part]) -> Iterable[list[Part]]:
        for start in range(0, len(parts), max(size, 1)):
            yield parts[start : start + size]

    return batches


def skipped_row(part: Part) -> Tables:
    """A skipped part's samples row: recorded with the reason, counted nowhere."""
    return {"samples": pd.DataFrame([part.skipped.row()])}


def claimed(store: RunStore, parts: Sequence[Part], shard: Shard) -> list[Part]:
    """The parts this worker runs: its shard's block of the whole list, less those already finished.
    The block is taken over the whole list, so every worker of a run agrees on it."""
    finished = store.finished()
    return [
        part
        for position, part in enumerate(parts)
        if shard.takes(position, len(parts)) and part.part_id not in finished
    ]


def execute_parts(
    store: RunStore | None,
    parts: Sequence[Part],
    compute: Callable[[list[Part]], Iterable[tuple[Part, Tables]]],
    *,
    shard: Shard,
    batches: Batches,
    progress: bool = True,
    description: str = "run",
    unit: str = "sample",
    skipped: Callable[[Part], Tables] = skipped_row,
    claim: bool = True,
    append: Callable[[Part, Tables], None] | None = None,
) -> None:
    """Run every part of ``parts`` this worker owns that has not finished, and append its tables.

    ``compute(batch)`` yields (part, tables) for each part of a batch, in any order; each part is
    appended as soon as it is yielded (the samples table last: the commit), so a killed run loses at
    most the batch in flight. ``claim=False`` runs ``parts`` as given: for a caller that claimed them
    itself, e.g. to build only the claimed parts' samples. ``append`` writes a computed part where it
    belongs (by default to ``store``; with parts of several runs, to each part's own).
    """
    if store is None and (claim or append is None):
        raise ValueError("Parts without a store need claim=False and an append.")
    todo = claimed(store, parts, shard) if claim else list(parts)
    if not todo:
        return
    if append is None:

        def append(part: Part, tables: Tables) -> None:
            store.append(part.part_id, tables)

    bar = tqdm(total=len(todo), desc=description, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        for part in todo:
            if part.skipped is not None:
                append(part, skipped(part))
                bar.update()
        for batch in batches([part for part in todo if part.skipped is None]):
            bar.set_postfix_str(batch[0].part_id, refresh=False)
            for part, tables in compute(batch):
                append(part, tables)
                bar.update()
    finally:
        bar.close()


def execute_samples(
    store: RunStore,
    part_ids: Sequence[str],
    build: Callable[[], Iterable[object]],
    compute: Callable[[list[Part]], Iterable[tuple[Part, Tables]]],
    *,
    shard: Shard,
    progress: bool = True,
    description: str = "run",
) -> None:
    """Parts that are a task's samples (part id = sample id), computed one at a time; the samples are
    built only when this worker has parts left to run."""
    todo = claimed(store, [Part(part_id, None) for part_id in part_ids], shard)
    if not todo:
        return
    wanted = {part.part_id for part in todo}
    samples = [sample for sample in build() if sample.sample_id in wanted]
    execute_parts(
        store,
        [Part.of(sample.sample_id, sample) for sample in samples],
        compute,
        shard=shard,
        batches=in_batches_of(1),
        progress=progress,
        description=description,
        claim=False,
    )
