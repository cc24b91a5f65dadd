"""The one greedy loop: prompts prefilled (shared prefixes computed once), then decoded together.

Each prompt's prefill covers all but its last token, which is fed as decode step 0, as the official
retrieval-head code does: decode-only gates then cover the query that emits the first answer token, and
step 0's attention is recorded like every later step's. Rows are left-padded to a common length with
their own positions; a row leaves the batch when it stops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from babelheads.probe import HeadGates, Instrument, StepRecords
from babelheads.runner.cache import BatchCache, cache_argument, input_device
from babelheads.runner.prefix import SharedPrefill
from babelheads.runner.stops import StopRule
from babelheads.tasks.base import Stop

DEFAULT_PREFILL_CHUNK = 4096


@dataclass
class Decoded:
    """tokens : the generated ids, the stop token included; records : one step per generated token,
    the attention of the query that produced it (the last prompt position for the first token), with
    a batch dimension of 1."""

    tokens: list[int]
    records: StepRecords | None
    hidden: np.ndarray | None = None
    """float32 (steps, hidden size): the final hidden state (the input of the LM head) of the query
    that produced each token, when asked for."""
    entropy: np.ndarray | None = None
    """float32 (steps,): the entropy in nats of the next-token distribution each token was taken
    from, when asked for."""


@dataclass(frozen=True)
class Row:
    """One prompt to decode: its token ids, its step limit, and its gates (or None)."""

    input_ids: Sequence[int]
    max_new_tokens: int
    gates: HeadGates | None = None
    regions: Sequence[int] | None = None
    """The region label of each prompt position (-1: none), for the instrument's region masses; it may
    run on past the prompt to label the positions the generated tokens will take."""
    stop: Stop = field(default_factory=Stop)
    """The sample's own stop (a reasoning chain runs over line breaks)."""


@torch.no_grad()
def decode_rows(
    instrument: Instrument,
    prefill: SharedPrefill,
    rows: Sequence[Row],
    stops: StopRule,
    record: bool,
    keep: Sequence[set[int]] | None = None,
    regions: int = 0,
    hidden: bool = False,
    entropy: bool = False,
) -> list[Decoded]:
    """Prefill every row (through ``prefill``, which reuses shared prefixes; ``keep`` are each row's
    branch points for later prompts) and decode them as one batch. ``regions`` : how many region
    labels the rows carry (their attention masses are recorded); ``hidden`` : keep final hidden states."""
    if not rows:
        return []
    for row in rows:
        if len(row.input_ids) < 1 or row.max_new_tokens < 1:
            raise ValueError("Every row needs at least one input token and max_new_tokens >= 1.")
    lengths = [len(row.input_ids) - 1 for row in rows]
    batch = BatchCache(instrument.model, lengths)
    instrument.set_phase("prefill")
    for index, row in enumerate(rows):
        with instrument.gated(row.gates):
            cache = prefill.prefill(list(row.input_ids[:-1]), keep[index] if keep else ())
        batch.add(index, cache)
    mask = batch.mask()
    labels = _region_labels(rows, regions, mask.device) if record and regions else None
    instrument.set_regions(labels, regions)
    try:
        return _decode(instrument, batch.cache, mask, rows, lengths, stops, record, hidden, entropy)
    finally:
        instrument.set_regions(None)


def _region_labels(rows: Sequence[Row], count: int, device: torch.device) -> torch.Tensor:
    width = max(max(len(row.input_ids), len(row.regions or ())) for row in rows)
    labels = torch.full((len(rows), width), -1, dtype=torch.long)
    for index, row in enumerate(rows):
        if row.regions is not None:
            if len(row.regions) < len(row.input_ids):
                raise ValueError("A row's region labels must cover at least its input ids.")
            labels[index, : len(row.regions)] = torch.as_tensor(list(row.regions), dtype=torch.long)
    if int(labels.max()) >= count:
        raise ValueError(f"Region labels must lie below {count}.")
    return labels.to(device)


@contextmanager
def _final_states(model: torch.nn.Module, keep: bool) -> Iterator[list[torch.Tensor]]:
    """The input of the LM head at each forward pass (its last position): the final hidden state,
    after the model's last norm, whatever the architecture names it."""
    states: list[torch.Tensor] = []
    if not keep:
        yield states
        return
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: states.append(args[0][:, -1].detach().float())
    )
    try:
        yield states
    finally:
        hook.remove()


def _decode(
    instrument: Instrument,
    cache,
    mask: torch.Tensor,
    rows: Sequence[Row],
    lengths: list[int],
    stops: StopRule,
    record: bool,
    hidden: bool = False,
    entropy: bool = False,
) -> list[Decoded]:
    model = instrument.model
    device = mask.device
    argument = cache_argument(type(model))
    live = torch.arange(len(rows), device=device)
    live_rows = list(range(len(rows)))
    step_input = torch.tensor([[row.input_ids[-1]] for row in rows], device=device)
    positions = torch.tensor(lengths, device=device)
    mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=device)], dim=1)
    tokens: list[list[int]] = [[] for _ in rows]
    started = [False] * len(rows)
    gates = HeadGates.per_row([row.gates for row in rows], instrument.layout, "decode")
    longest = max(row.max_new_tokens for row in rows)
    recording = instrument.recording(len(rows), longest) if record else nullcontext()
    instrument.set_phase("decode")
    kept_hidden: list[list[np.ndarray]] = [[] for _ in rows]
    kept_entropy: list[list[float]] = [[] for _ in rows]
    try:
        with recording, instrument.gated(gates), _final_states(model, hidden) as states:
            for step in range(longest):
                instrument.positions = positions
                if record:
                    instrument.advance(step, live)
                logits = model(
                    input_ids=step_input,
                    attention_mask=mask,
                    position_ids=positions.unsqueeze(1),
                    **{argument: cache},
                    use_cache=True,
                    logits_to_keep=1,
                ).logits
                emitted = logits[:, -1].argmax(-1).tolist()  # the one host sync per step
                if entropy:
                    spread = _entropy(logits[:, -1]).tolist()
                    for row_index, value in zip(live_rows, spread, strict=True):
                        kept_entropy[row_index].append(value)
                if hidden:
                    for row_index, state in zip(live_rows, states.pop().cpu().numpy(), strict=True):
                        kept_hidden[row_index].append(state)
                keep = []
                for slot, (row_index, token) in enumerate(zip(live_rows, emitted, strict=True)):
                    tokens[row_index].append(token)
                    stop, started[row_index] = stops.ends(
                        token, started[row_index], rows[row_index].stop, tokens[row_index]
                    )
                    if not stop and len(tokens[row_index]) < rows[row_index].max_new_tokens:
                        keep.append(slot)
                if not keep:
                    break
                if len(keep) < len(live_rows):
                    chosen = torch.tensor(keep, device=device)
                    cache.batch_select_indices(torch.tensor(keep))  # host indices: layers may sit anywhere
                    live, mask, positions = live[chosen], mask[chosen], positions[chosen]
                    live_rows = [live_rows[slot] for slot in keep]
                    emitted = [emitted[slot] for slot in keep]
                    if instrument.gates is not None:
                        instrument.gates = instrument.gates.select(chosen)
                step_input = torch.tensor(emitted, device=device).unsqueeze(1)
                positions = positions + 1
                mask = torch.cat(
                    [mask, torch.ones(len(live_rows), 1, dtype=mask.dtype, device=device)], dim=1
                )
    finally:
        instrument.set_phase("prefill")
        instrument.positions = None
    records = instrument.take_records() if record else None
    return [
        Decoded(
            row_tokens,
            None
            if records is None
            else StepRecords(
                records.positions[: len(row_tokens), index : index + 1],
                records.weights[: len(row_tokens), index : index + 1],
                None if records.mass is None else records.mass[: len(row_tokens), index : index + 1],
            ),
            np.stack(kept_hidden[index]) if hidden else None,
            np.asarray(kept_entropy[index], np.float32) if entropy else None,
        )
        for index, row_tokens in enumerate(tokens)
    ]


@torch.no_grad()
def decode_prefilled(instrument: Instrument, cache, row: Row, stops: StopRule, record: bool) -> Decoded:
    """Decode one row whose cache already holds all of its prompt but the last token (a cache the
    caller built, e.g. a compressed one)."""
    length = len(row.input_ids) - 1
    mask = torch.ones(1, length, dtype=torch.long, device=input_device(instrument.model))
    return _decode(instrument, cache, mask, [row], [length], stops, record)[0]


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)


def greedy_decode(
    instrument: Instrument,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    stops: StopRule | None = None,
    record: bool = True,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> Decoded:
    """Decode one prompt of shape (1, n): the batch loop with one row and a fresh cache."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (1, n), n >= 1. Got {tuple(input_ids.shape)} instead.")
    prefill = SharedPrefill(instrument.model, prefill_chunk, share=False)
    row = Row(input_ids[0].tolist(), max_new_tokens, instrument.gates)
    with instrument.gated(None):
        return decode_rows(instrument, prefill, [row], stops or StopRule(), record)[0]
