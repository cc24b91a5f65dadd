"""KV caches for the runner: a fresh one per model, and several prompts' caches stacked into one batch.

Stacking left-pads every row to the longest prompt, so that in padded coordinates all rows end at the
same index: the padding mask hides the pads, positions stay each row's own, and a sliding-window layer
(which holds the last window - 1 keys of each row) lines up with the window the mask computes.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache


@functools.cache
def cache_argument(model_class: type) -> str:
    """The name the model's forward takes its KV cache by: 'cache' from transformers 5.24 on (which
    warns on every call given the old name), 'past_key_values' before."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def new_cache(model: torch.nn.Module) -> DynamicCache:
    return DynamicCache(config=model.config)


def stack_caches(
    model: torch.nn.Module, caches: list[DynamicCache], lengths: list[int]
) -> tuple[DynamicCache, torch.Tensor]:
    """One batch cache from single-row caches holding ``lengths`` tokens each, and its 2D padding mask
    of shape (batch, max(lengths)), 1 on real tokens. Rows are copied (one row alone is shared: decoding
    never writes into a tensor the cache already holds)."""
    padded = max(lengths, default=0)
    device = next(model.parameters()).device
    mask = torch.zeros(len(caches), padded, dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        mask[row, padded - length :] = 1
    batch = new_cache(model)
    for index, layer in enumerate(batch.layers):
        sources = [cache.layers[index] for cache in caches]
        reference = next((source for source in sources if source.is_initialized), None)
        if reference is None or reference.keys.numel() == 0:
            continue
        sliding = getattr(layer, "is_sliding", False)
        width = min(layer.sliding_window - 1, padded) if sliding else padded
        keys = _stack([s.keys if s.is_initialized else None for s in sources], reference.keys, width)
        values = _stack([s.values if s.is_initialized else None for s in sources], reference.values, width)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        if sliding:
            layer.cumulative_length = padded
    return batch, mask


def _stack(rows: list[torch.Tensor | None], like: torch.Tensor, width: int) -> torch.Tensor:
    if len(rows) == 1 and rows[0] is not None and rows[0].shape[-2] == width:
        return rows[0]
    _, heads, _, dim = like.shape
    out = like.new_zeros(len(rows), heads, width, dim)
    for index, row in enumerate(rows):
        if row is not None and row.shape[-2]:
            out[index, :, width - row.shape[-2] :] = row[0]
    return out
