"""Runs of jobs: which samples decode together, in which order, and the tables each one writes.

Jobs are grouped by what their prefill computes (no prefill gates, or the same ones), sorted by prompt
tokens so that neighbours share the longest prefixes, and decoded in batches of ``batch_size`` rows.
Every job still writes its own parts, so a run resumes job by job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument, ProbeSettings
from babelheads.runner.cache import kv_bytes_per_row
from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Decoded, Row, decode_rows
from babelheads.runner.parts import Part, Shard, claimed, execute_parts, in_batches_of
from babelheads.runner.prefix import DEFAULT_MAX_SNAPSHOTS, SharedPrefill, branch_points
from babelheads.runner.stops import StopRule
from babelheads.runs import RunStore
from babelheads.scoring import retrieval_tables
from babelheads.tasks.base import Sample, Skipped

DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 16}
"""Rows decoded together when the user sets none, as many as fit (see rows_per_batch). A decoding step
reads every weight once for the whole batch, the LM head included (671 MB on Gemma 3 270M's 262K
vocabulary), so on 2 CPU cores a row-step costs 100 ms alone, 23 ms in 8 rows, 13 ms in 16 (bigger
batches gain less: rows stop at different steps, and prefill dominates long prompts)."""
CACHE_SHARE_OF_FREE_MEMORY = 0.5


@dataclass(frozen=True)
class Job:
    """One decoding to run: a sample under a gate setting. ``part_id`` names its parts in the store;
    ``columns`` are added to its samples row (e.g. the mask it ran under)."""

    part_id: str
    sample: Sample | Skipped
    gates: HeadGates | None = None
    columns: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class RunSettings:
    """max_new_tokens : greedy steps at most. probe : record attention peaks with these settings (and
    write events and per-sample head scores), or None to decode only. batch_size : rows decoded
    together (None: the device's default). share_prefix : prefill shared token prefixes once (False
    prefills every prompt alone: the reference path). max_snapshots : sliding-window states kept alive
    for later prompts. shard : this worker's block of the jobs (the whole list by default)."""

    max_new_tokens: int = 32
    probe: ProbeSettings | None = None
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    batch_size: int | None = None
    share_prefix: bool = True
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS
    shard: Shard = field(default_factory=Shard)
    regions: tuple[str, ...] = ()
    """While recording, also each head's attention mass on these sample spans (a name covers the span
    of that name and those named NAME_0, NAME_1, ...; a later region wins where spans overlap)."""
    hidden_states: bool = False
    """Also write each step's final hidden state (table 'hidden')."""

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Got {self.batch_size} instead.")

    def rows_per_batch(self, device: torch.device, bytes_per_row: int) -> int:
        """The batch size: the user's, else the device's default, cut so that the batch's KV cache
        takes at most half of the device's free memory (a 7B model at 32K tokens holds 4 GiB a row)."""
        if self.batch_size:
            return self.batch_size
        rows = DEFAULT_BATCH_SIZE.get(device.type, 8)
        free = free_memory(device)
        if free is not None:
            rows = min(rows, int(CACHE_SHARE_OF_FREE_MEMORY * free // max(bytes_per_row, 1)))
        return max(rows, 1)


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still give: CUDA's free memory; on CPU the kernel's MemAvailable (Linux);
    None where neither can be read (no cap then)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rows_under_cap(batch_size: int | None, loaded: LoadedModel, longest: int) -> int:
    """Rows decoded together: the user's batch size, else the device's default, cut so that
    rows of ``longest`` tokens keep their KV caches within the memory cap (see RunSettings)."""
    element = next(loaded.model.parameters()).element_size()
    settings = RunSettings(batch_size=batch_size)
    return settings.rows_per_batch(loaded.device, kv_bytes_per_row(loaded.layout, longest, element))


@dataclass(frozen=True)
class JobSet:
    """The jobs of one run: the store their parts go to, how their outputs are scored, and the
    settings they decode under."""

    store: RunStore
    jobs: Sequence[Job]
    score: Callable[[Sample, str], dict[str, object]]
    settings: RunSettings
    description: str = "run"
    """The progress bar's name when the run decodes alone."""


_PER_RUN = ("max_new_tokens", "hidden_states", "shard")
"""Settings two runs decoded in one walk may differ in: each row has its own step limit, hidden
states are kept for the rows that want them, and each run claims its own shard of its parts."""


def run_jobs(
    store: RunStore,
    loaded: LoadedModel,
    jobs: Iterable[Job],
    score: Callable[[Sample, str], dict[str, object]],
    settings: RunSettings,
    progress: bool = True,
    description: str = "run",
) -> None:
    """Decode every job not yet finished in ``store`` and append its tables, one part per job.

    A skipped sample is written as a samples row with status 'skipped' and its reason, so it shows in
    every summary and is not retried on resume.
    """
    run_job_sets([JobSet(store, list(jobs), score, settings, description)], loaded, progress, description)


def run_job_sets(
    sets: Sequence[JobSet], loaded: LoadedModel, progress: bool = True, description: str = "run"
) -> None:
    """Decode the unfinished jobs of several runs in one walk over their prompts, so that a prompt
    prefix two runs share (one haystack asked two questions) is prefilled once. Every job still
    writes its own parts to its own run, and resumes there. The runs must record the same way: their
    settings may differ only in max_new_tokens, hidden_states and shard."""
    if not sets:
        return
    settings = _joint_settings([job_set.settings for job_set in sets])
    todo: list[Part] = []
    for index, job_set in enumerate(sets):
        parts = [
            Part(job.part_id, _Owned(index, job), job.sample if isinstance(job.sample, Skipped) else None)
            for job in job_set.jobs
        ]
        todo += claimed(job_set.store, parts, job_set.settings.shard)
    if not todo:
        return
    stops = StopRule.for_model(loaded)
    record = settings.probe is not None
    element = next(loaded.model.parameters()).element_size()

    def tables(owned: _Owned, decoded: Decoded | None) -> dict[str, pd.DataFrame]:
        job_set = sets[owned.run]
        return _tables(owned.job, loaded, job_set.score, job_set.settings, decoded)

    def append(part: Part, written: dict[str, pd.DataFrame]) -> None:
        sets[part.work.run].store.append(part.part_id, written)

    with Instrument(loaded.model, loaded.layout, settings.probe or ProbeSettings()) as instrument:

        def batches(parts: list[Part]) -> Iterable[list[Part]]:
            for group in _groups([part.work for part in parts]):
                prefill = SharedPrefill(
                    loaded.model, settings.prefill_chunk, settings.share_prefix, settings.max_snapshots
                )
                keep = branch_points([owned.job.sample.input_ids[:-1] for owned in group])
                longest = max(
                    len(owned.job.sample.input_ids) + sets[owned.run].settings.max_new_tokens
                    for owned in group
                )
                size = settings.rows_per_batch(
                    loaded.device, kv_bytes_per_row(loaded.layout, longest, element)
                )
                planned = [
                    Part(owned.job.part_id, _Planned(owned, prefill, kept))
                    for owned, kept in zip(group, keep, strict=True)
                ]
                yield from in_batches_of(size)(planned)

        def compute(batch: list[Part]) -> Iterable[tuple[Part, dict[str, pd.DataFrame]]]:
            plans: list[_Planned] = [part.work for part in batch]
            rows = [
                Row(
                    plan.job.sample.input_ids,
                    plan.job.sample.max_new_tokens or sets[plan.owned.run].settings.max_new_tokens,
                    plan.job.gates,
                    region_labels(plan.job.sample, settings.regions) if settings.regions else None,
                    plan.job.sample.stop,
                )
                for plan in plans
            ]
            results = decode_rows(
                instrument,
                plans[0].prefill,
                rows,
                stops,
                record,
                [plan.keep for plan in plans],
                len(settings.regions) if record else 0,
                settings.hidden_states,
            )
            for part, plan, decoded in zip(batch, plans, results, strict=True):
                yield Part(part.part_id, plan.owned), tables(plan.owned, decoded)

        execute_parts(
            None,
            todo,
            compute,
            shard=settings.shard,
            batches=batches,
            progress=progress,
            description=description,
            skipped=lambda part: tables(part.work, None),
            claim=False,
            append=append,
        )


def _joint_settings(settings: Sequence[RunSettings]) -> RunSettings:
    """The settings of a joint walk: the runs' own, which must agree but for the per-run ones (hidden
    states are kept when any run wants them, and dropped for the others' rows)."""
    first = replace(settings[0], max_new_tokens=0, hidden_states=False, shard=Shard())
    for other in settings[1:]:
        if replace(other, max_new_tokens=0, hidden_states=False, shard=Shard()) != first:
            raise ValueError(
                f"Runs decoded in one walk must record the same way (all settings but {', '.join(_PER_RUN)})."
            )
    return replace(settings[0], hidden_states=any(each.hidden_states for each in settings))


@dataclass(frozen=True)
class _Owned:
    """A job and the index of the run (of a joint walk) it belongs to."""

    run: int
    job: Job


@dataclass(frozen=True)
class _Planned:
    """A job in its batch: the shared prefill of its group, and the prefix lengths where later prompts
    branch off its prompt (the prefill snapshots it leaves behind for them)."""

    owned: _Owned
    prefill: SharedPrefill
    keep: set[int]

    @property
    def job(self) -> Job:
        return self.owned.job


def region_labels(sample: Sample, regions: tuple[str, ...]) -> list[int]:
    """Each prompt position's region index (-1: none) from the sample's named spans."""
    labels = [-1] * len(sample.input_ids)
    for index, region in enumerate(regions):
        for name, (start, end) in sample.spans.items():
            if name == region or (name.startswith(f"{region}_") and name[len(region) + 1 :].isdigit()):
                labels[start:end] = [index] * (end - start)
    return labels


def _groups(jobs: list[_Owned]) -> list[list[_Owned]]:
    """Jobs whose prefill computes the same thing and whose decode gates share a mode, each group
    sorted by prompt tokens (stable: equal prompts keep their order)."""
    groups: dict[tuple[str, str], list[_Owned]] = {}
    for owned in jobs:
        key = (_prefill_key(owned.job.gates), _decode_mode(owned.job.gates))
        groups.setdefault(key, []).append(owned)
    return [sorted(group, key=lambda owned: tuple(owned.job.sample.input_ids)) for group in groups.values()]


def _prefill_key(gates: HeadGates | None) -> str:
    if gates is None or not gates.applies_to("prefill"):
        return ""
    values = gates.values.detach().float().cpu().numpy().tobytes()
    return f"{gates.mode}:{hashlib.sha1(values).hexdigest()}"


def _decode_mode(gates: HeadGates | None) -> str:
    return gates.mode if gates is not None and gates.applies_to("decode") else ""


def _tables(
    job: Job,
    loaded: LoadedModel,
    score: Callable[[Sample, str], dict[str, object]],
    settings: RunSettings,
    decoded: Decoded | None,
) -> dict[str, pd.DataFrame]:
    sample = job.sample
    base = {"sample_id": sample.sample_id, "language": sample.language, **dict(job.columns)}
    if isinstance(sample, Skipped) or decoded is None:
        row = {**base, **sample.meta, "status": "skipped", "reason": sample.reason, "success": False}
        return {"samples": pd.DataFrame([row])}
    output = loaded.tokenizer.decode(decoded.tokens, skip_special_tokens=True).strip()
    row = {
        **base,
        **sample.meta,
        "tokens": len(sample.input_ids),
        "status": "ok",
        "reason": "",
        "expected": sample.expected,
        "output": output,
        "steps": len(decoded.tokens),
        **{
            f"{name}_{edge}": span[i]
            for name, span in sample.spans.items()
            for i, edge in enumerate(("start", "end"))
        },
        **score(sample, output),
    }
    tables = {"samples": pd.DataFrame([row])}
    if settings.probe is not None:
        tables.update(
            retrieval_tables(base, sample, decoded.tokens, decoded.records, loaded.layout, settings.regions)
        )
    if decoded.hidden is not None and settings.hidden_states:
        tables["hidden"] = pd.DataFrame(
            {
                "sample_id": sample.sample_id,
                "step": np.arange(len(decoded.hidden), dtype=np.int32),
                "state": [row.astype(np.float32).tobytes() for row in decoded.hidden],
            }
        )
    return tables
