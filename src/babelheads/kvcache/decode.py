"""One prompt through a compressed cache: prefill the context, compress it, prefill the question
(never evicted), then the runner's greedy loop. Compression acts on the context only, as kvpress's
pipeline does: compressing the question would favour query-aware methods."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from babelheads.kvcache.cache import analytic_bytes, compressed_layers, compressible_cache, storage_bytes
from babelheads.probe import Instrument
from babelheads.runner.cache import fill_cache, input_device
from babelheads.runner.decode import Decoded, Row, decode_prefilled
from babelheads.runner.stops import StopRule

KeepRule = Callable[[DynamicCache, int], dict[int, list[torch.Tensor]]]
"""(the cache holding the prefilled context, its length) -> per compressed layer, per KV head, the
context positions to keep."""


@dataclass
class CompressedDecode:
    decoded: Decoded
    bytes_analytic: int
    """Stored K/V elements x element size once the prompt is in (context compressed, question added)."""
    bytes_storage: int
    """The distinct storages the cache holds at that moment."""
    bytes_full_layers: int
    """The part of ``bytes_analytic`` in full-attention layers (the ones policies act on)."""
    peak_prefill: float = float("nan")
    """On a GPU: peak allocated bytes while the question was prefilled onto the compressed cache, less
    what was allocated besides that cache (the weights, the reference prefill other policies fork):
    this policy's cache and activations."""
    peak_decode: float = float("nan")
    """On a GPU: the same while decoding."""


@torch.no_grad()
def prefill_context(instrument: Instrument, input_ids: Sequence[int], context_end: int, chunk: int = 4096):
    """A compressible cache holding the context [0, context_end), prefilled at full attention."""
    ids = list(input_ids)
    if not 0 < context_end < len(ids):
        raise ValueError(f"context_end must lie inside the prompt (1..{len(ids) - 1}). Got {context_end}.")
    cache = compressible_cache(instrument.model)
    instrument.set_phase("prefill")
    fill_cache(instrument.model, cache, ids, 0, context_end, chunk)
    return cache


@torch.no_grad()
def compressed_decode_from(
    instrument: Instrument,
    cache: DynamicCache,
    input_ids: Sequence[int],
    context_end: int,
    keep: dict[int, list[torch.Tensor]],
    max_new_tokens: int,
    stops: StopRule,
    record: bool = False,
    chunk: int = 4096,
) -> CompressedDecode:
    """Compress ``cache`` (holding the context; a :func:`fork` when the prefill is reused) by ``keep``
    (per compressed layer, per KV head, the context positions to keep), prefill the question and
    decode greedily."""
    ids = list(input_ids)
    device = input_device(instrument.model)
    gpu = device.type == "cuda"
    # Before compressing, the fork shares every tensor of the caller's reference prefill (kept for the
    # next policy's fork): what is allocated now is the weights and that prefill, and the peaks are
    # reported above it, so they are this policy's own cache (the full policy's first update copies the
    # shared context, which counts as its own too).
    if gpu:
        torch.cuda.synchronize(device)
    resident = float(torch.cuda.memory_allocated(device)) if gpu else float("nan")
    for index, positions in keep.items():
        compressed_layers(cache)[index].compress(positions)
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    fill_cache(instrument.model, cache, ids, context_end, len(ids) - 1, chunk)
    analytic, storage = analytic_bytes(cache), storage_bytes(cache)
    full = sum(
        sum(t.numel() * t.element_size() for t in layer.tensors())
        for layer in compressed_layers(cache).values()
    )
    peak_prefill = float(torch.cuda.max_memory_allocated(device)) - resident if gpu else float("nan")
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    decoded = decode_prefilled(instrument, cache, Row(ids, max_new_tokens), stops, record)
    peak_decode = float(torch.cuda.max_memory_allocated(device)) - resident if gpu else float("nan")
    return CompressedDecode(decoded, analytic, storage, full, peak_prefill, peak_decode)
