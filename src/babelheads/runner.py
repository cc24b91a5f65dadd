"""The one runner: greedy decoding with the instrument, stop rules, gates, and a resumable run loop.

Every experiment decodes through :func:`run_jobs` (or :func:`greedy_decode` for a single prompt); no
other module has a decode loop. The prefill covers the prompt but its last token, which is fed as
decode step 0, as the official retrieval-head code does: decode-only gates then cover the query that
emits the first answer token, and step 0's attention is recorded like every later step's.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument, ProbeSettings, StepRecords
from babelheads.runs import RunStore
from babelheads.scoring import retrieval_tables
from babelheads.tasks.base import Sample, Skipped

DEFAULT_PREFILL_CHUNK = 4096
END_OF_TURN = (
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<eos>",
    "</s>",
)
"""Special tokens that end a turn in the common chat formats; a model stops on those it has."""


@dataclass(frozen=True)
class StopRule:
    """When greedy decoding ends.

    stop_ids : end at once (EOS ids of the generation config and tokenizer, end-of-turn tokens).
    blank_newlines : tokens of whitespace with a line break; they end the answer once it has begun, and
        are skipped before it (base models often open with a blank line).
    text_newlines : tokens with text and a line break ('42\\n'); the answer ends with them.
    """

    stop_ids: frozenset[int] = frozenset()
    blank_newlines: frozenset[int] = frozenset()
    text_newlines: frozenset[int] = frozenset()

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> StopRule:
        tokenizer = loaded.tokenizer
        stops: set[int] = set()
        eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        stops.update(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        stops.update(vocab[name] for name in END_OF_TURN if name in vocab)
        blank, text = set(), set()
        for token, index in vocab.items():
            if "\n" in token or "Ċ" in token or token == "<0x0A>":
                decoded = tokenizer.decode([index])
                if "\n" not in decoded:
                    continue
                (blank if not decoded.strip() else text).add(index)
        return cls(frozenset(stops), frozenset(blank - stops), frozenset(text - stops))

    def ends(self, token: int, started: bool) -> tuple[bool, bool]:
        """(stop now, answer started) after emitting ``token``."""
        if token in self.stop_ids or token in self.text_newlines:
            return True, True
        if token in self.blank_newlines:
            return started, started
        return False, True


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
    stops: StopRule | None = None,
    record: bool = True,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> Decoded:
    """Prefill ``input_ids[:, :-1]`` (shape (1, n)) in chunks, then decode greedily from the last prompt
    token. Chunking bounds the n x n mask transformers builds for sliding-window layers."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (1, n), n >= 1. Got {tuple(input_ids.shape)} instead.")
    model = instrument.model
    stops = stops or StopRule()
    cache = {cache_argument(type(model)): DynamicCache(config=model.config)}
    length = input_ids.shape[1]
    tokens: list[int] = []
    instrument.set_phase("prefill")
    instrument.position = None
    for start in range(0, length - 1, prefill_chunk):
        model(
            input_ids=input_ids[:, start : min(start + prefill_chunk, length - 1)],
            **cache,
            use_cache=True,
            logits_to_keep=1,
        )
    step_input, position, started = input_ids[:, -1:], length - 1, False
    try:
        instrument.set_phase("decode")
        with instrument.recording() if record else nullcontext():
            while True:
                instrument.position = position
                logits = model(
                    input_ids=step_input,
                    **cache,
                    use_cache=True,
                    position_ids=torch.tensor([[position]], device=input_ids.device),
                    logits_to_keep=1,
                ).logits
                token = int(logits[0, -1].argmax())
                tokens.append(token)
                stop, started = stops.ends(token, started)
                if stop or len(tokens) >= max_new_tokens:
                    break
                step_input = torch.tensor([[token]], device=input_ids.device)
                position += 1
    finally:
        instrument.set_phase("prefill")
        instrument.position = None
    return Decoded(tokens, instrument.take_records() if record else None)


@functools.cache
def cache_argument(model_class: type) -> str:
    """The name the model's forward takes its KV cache by: 'cache' from transformers 5.24 on (which
    warns on every call given the old name), 'past_key_values' before."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


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
    write events and per-sample head scores), or None to decode only."""

    max_new_tokens: int = 32
    probe: ProbeSettings | None = None
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK


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
    finished = store.finished()
    todo = [job for job in jobs if job.part_id not in finished]
    if not todo:
        return
    instrument = Instrument(loaded.model, loaded.layout, settings.probe or ProbeSettings())
    stops = StopRule.for_model(loaded)
    bar = tqdm(todo, desc=description, unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for job in bar:
            bar.set_postfix_str(job.part_id, refresh=False)
            store.append(job.part_id, _job_tables(job, instrument, loaded, stops, score, settings))
    finally:
        instrument.detach()


def _job_tables(
    job: Job,
    instrument: Instrument,
    loaded: LoadedModel,
    stops: StopRule,
    score: Callable[[Sample, str], dict[str, object]],
    settings: RunSettings,
) -> dict[str, pd.DataFrame]:
    sample = job.sample
    base = {"sample_id": sample.sample_id, "language": sample.condition, **dict(job.columns)}
    if isinstance(sample, Skipped):
        row = {**base, **sample.meta, "status": "skipped", "reason": sample.reason, "success": False}
        return {"samples": pd.DataFrame([row])}
    ids = torch.tensor([sample.input_ids], device=loaded.device)
    record = settings.probe is not None
    with instrument.gated(job.gates):
        decoded = greedy_decode(
            instrument,
            ids,
            sample.max_new_tokens or settings.max_new_tokens,
            stops,
            record=record,
            prefill_chunk=settings.prefill_chunk,
        )
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
    if record:
        tables.update(retrieval_tables(base, sample, decoded.tokens, decoded.records, loaded.layout))
    return tables
