"""Greedy decoding with the instrument recording each step; the one loop every experiment runs."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from babelheads.probe import Instrument, StepRecords

DEFAULT_PREFILL_CHUNK = 4096


@dataclass
class Decoded:
    """tokens : the generated ids, the stop token included; records : one step per generated token,
    the attention of the query that produced it (the last prompt position for the first token)."""

    tokens: list[int]
    records: StepRecords | None


@torch.no_grad()
def greedy_decode(
    instrument: Instrument,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    newline_ids: Iterable[int] = (),
    record: bool = True,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> Decoded:
    """Prefill ``input_ids`` (shape (1, n)) in chunks, then decode greedily.

    ``stop_ids`` end decoding at once; ``newline_ids`` end it once the answer has begun (base models
    often open with a blank line). Chunking bounds the n x n mask transformers builds for
    sliding-window layers. Recording covers the forward pass of the last chunk (its last row is the
    query that emits the first answer token) and every decode step.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, n). Got {tuple(input_ids.shape)} instead.")
    model = instrument.model
    stops, newlines = set(stop_ids), set(newline_ids)
    started = False
    cache = DynamicCache(config=model.config)
    length = input_ids.shape[1]
    starts = list(range(0, length, prefill_chunk))
    tokens: list[int] = []
    instrument.set_phase("prefill")
    for start in starts[:-1]:
        model(
            input_ids=input_ids[:, start : start + prefill_chunk],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    recorder = instrument.recording() if record else nullcontext()
    with recorder:
        logits = model(
            input_ids=input_ids[:, starts[-1] :], past_key_values=cache, use_cache=True, logits_to_keep=1
        ).logits
        instrument.set_phase("decode")
        position = length
        while True:
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token in stops or (started and token in newlines) or len(tokens) >= max_new_tokens:
                break
            started = started or token not in newlines
            instrument.position = position
            logits = model(
                input_ids=torch.tensor([[token]], device=input_ids.device),
                past_key_values=cache,
                use_cache=True,
                position_ids=torch.tensor([[position]], device=input_ids.device),
                logits_to_keep=1,
            ).logits
            position += 1
    instrument.set_phase("prefill")
    return Decoded(tokens, instrument.take_records() if record else None)


def newline_token_ids(tokenizer) -> set[int]:
    """Ids of vocabulary entries that contain a line break (SentencePiece '\\n', byte-level 'Ċ', '<0x0A>')."""
    return {
        index
        for token, index in tokenizer.get_vocab().items()
        if "\n" in token or "Ċ" in token or token == "<0x0A>"
    }
