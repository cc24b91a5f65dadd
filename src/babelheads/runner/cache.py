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

from babelheads.heads import HeadLayout


@functools.cache
def cache_argument(model_class: type) -> str:
    """The name the model's forward takes its KV cache by: 'cache' from transformers 5.24 on (which
    warns on every call given the old name), 'past_key_values' before."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _body(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's decoder without its LM head, or None where it exposes none apart from itself."""
    try:
        body = model.get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    return body if isinstance(body, torch.nn.Module) and body is not model else None


def fill_cache(
    model: torch.nn.Module, cache: DynamicCache, ids: list[int], start: int, end: int, chunk: int
) -> None:
    """Run ``ids[start:end]`` into ``cache`` at their absolute positions, ``chunk`` tokens a pass.

    Only the cache is wanted, so the pass goes through the decoder body without the LM head where the
    model exposes one (``get_decoder``): the head's one kept row costs a full vocabulary's projection
    per pass, which on a 262K vocabulary outweighs the body when a shared prefix leaves a few tokens
    to extend. Other models run whole, keeping one row of logits."""
    body = _body(model)
    runner, extra = (model, {"logits_to_keep": 1}) if body is None else (body, {})
    device = input_device(model)
    argument = cache_argument(type(runner))
    for left in range(start, end, chunk):
        right = min(left + chunk, end)
        runner(
            input_ids=torch.tensor([ids[left:right]], device=device),
            position_ids=torch.arange(left, right, device=device).unsqueeze(0),
            **{argument: cache},
            use_cache=True,
            **extra,
        )


def new_cache(model: torch.nn.Module) -> DynamicCache:
    return DynamicCache(config=model.config)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the input embeddings' device (the first of a model split over devices)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return weight.device if weight is not None else next(model.parameters()).device


def kv_bytes_per_row(layout: HeadLayout, tokens: int, element_size: int) -> int:
    """Bytes of one row's KV cache at ``tokens`` tokens (a sliding layer holds its window at most)."""
    per_token = 2 * layout.num_kv_heads * layout.head_dim * element_size
    return sum(
        per_token * (tokens if window is None else min(window, tokens)) for window in layout.layer_windows
    )


class BatchCache:
    """One batch cache filled row by row: each row's layers are copied once into tensors allocated
    for the whole batch (left-padded), so a batch never holds two copies of a row. A batch of one row
    keeps that row's own tensors: decoding never writes into a tensor the cache already holds."""

    def __init__(self, model: torch.nn.Module, lengths: list[int]):
        self.model = model
        self.lengths = lengths
        self.padded = max(lengths, default=0)
        self.cache = new_cache(model)
        self._single = len(lengths) == 1

    def add(self, row: int, source: DynamicCache) -> None:
        """Copy ``source`` (a single-row cache holding ``lengths[row]`` tokens) into row ``row``."""
        for layer, part in zip(self.cache.layers, source.layers, strict=True):
            if not part.is_initialized or part.keys.numel() == 0:
                continue
            sliding = getattr(layer, "is_sliding", False)
            width = min(layer.sliding_window - 1, self.padded) if sliding else self.padded
            if not layer.is_initialized:
                layer.lazy_initialization(part.keys, part.values)  # dtype and device only
                if self._single:
                    layer.keys, layer.values = part.keys, part.values
                else:
                    _, heads, _, dim = part.keys.shape
                    shape = (len(self.lengths), heads, width, dim)
                    layer.keys, layer.values = part.keys.new_zeros(shape), part.values.new_zeros(shape)
            if not self._single:
                size = part.keys.shape[-2]
                layer.keys[row, :, width - size :] = part.keys[0]
                layer.values[row, :, width - size :] = part.values[0]
            if sliding:
                layer.cumulative_length = self.padded

    def mask(self) -> torch.Tensor:
        """The 2D padding mask, shape (batch, max(lengths)): 1 on real tokens, 0 on left padding."""
        mask = torch.zeros(len(self.lengths), self.padded, dtype=torch.long, device=input_device(self.model))
        for row, length in enumerate(self.lengths):
            mask[row, self.padded - length :] = 1
        return mask
