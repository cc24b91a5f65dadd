"""A KV cache that keeps a different set of positions per KV head.

A full-attention layer behaves as transformers' ``DynamicLayer`` until :func:`compress` gives it, per
KV head, the context positions to keep. KV heads that keep the same positions form one *bucket*: one
key and one value tensor of their own (copies, never views of the full tensors, so the evicted keys
are freed). Every later token is appended to every bucket. Attention then receives a
:class:`BucketedKV` instead of tensors, and babelheads' attention function computes each bucket
exactly with the key positions it holds (``probe/buckets.py``).

Sliding-window layers (Gemma 3's local layers) keep transformers' window, as a copy of their own.
The logical length (every position seen) is what ``get_seq_length`` reports, so positions stay right
after eviction.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from babelheads.errors import BabelheadsError
from babelheads.probe.buckets import Bucket, BucketedKV


class HeadCompressedLayer(DynamicLayer):
    """A full-attention layer whose KV heads may each keep their own positions (batch of one)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.buckets: list[Bucket] | None = None
        self.cumulative_length = 0

    @property
    def compressed(self) -> bool:
        return self.buckets is not None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start = self.cumulative_length
        self.cumulative_length += key_states.shape[-2]
        if not self.compressed:
            return super().update(key_states, value_states, *args, **kwargs)
        new = torch.arange(start, self.cumulative_length, device=key_states.device)
        for bucket in self.buckets:
            bucket.keys = torch.cat([bucket.keys, key_states[:, bucket.heads]], dim=-2)
            bucket.values = torch.cat([bucket.values, value_states[:, bucket.heads]], dim=-2)
            bucket.positions = torch.cat([bucket.positions, new])
        kv = BucketedKV(self.buckets, new, key_states.shape[1])
        return kv, kv

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # The mask transformers builds covers the logical length; a compressed layer ignores it and
        # builds each bucket's mask from the positions it holds.
        return self.cumulative_length + query_length, 0

    def compress(self, keep: Sequence[torch.Tensor]) -> None:
        """Keep, for KV head h, the positions ``keep[h]`` (ascending) of what is stored now."""
        if self.compressed:
            raise BabelheadsError("A layer is compressed once, after the context is prefilled.")
        if self.keys.shape[0] != 1:
            raise BabelheadsError("Compressed caches hold one row (batch size 1).")
        if len(keep) != self.keys.shape[1]:
            raise ValueError(f"{len(keep)} position sets for {self.keys.shape[1]} KV heads.")
        groups: dict[tuple[int, ...], list[int]] = {}
        for head, positions in enumerate(keep):
            groups.setdefault(tuple(int(p) for p in positions), []).append(head)
        if len(groups) == 1 and len(next(iter(groups))) == self.keys.shape[-2]:
            return  # every head keeps everything: stay an ordinary layer (exactly the normal cache)
        device = self.keys.device
        buckets = []
        for positions, heads in groups.items():
            index = torch.tensor(positions, dtype=torch.long, device=device)
            chosen = torch.tensor(heads, dtype=torch.long, device=device)
            # index_select copies: the bucket owns its storage and the full tensors can be freed.
            keys = self.keys.index_select(1, chosen).index_select(2, index).contiguous()
            values = self.values.index_select(1, chosen).index_select(2, index).contiguous()
            buckets.append(Bucket(chosen, keys, values, index))
        self.buckets = buckets
        self.keys = self.values = None

    def tensors(self) -> list[torch.Tensor]:
        if self.compressed:
            return [t for bucket in self.buckets for t in (bucket.keys, bucket.values)]
        return [] if self.keys is None else [self.keys, self.values]

    def kept_per_head(self) -> list[int]:
        """How many positions each KV head holds."""
        if not self.compressed:
            count = 0 if self.keys is None else self.keys.shape[-2]
            return [count] * (0 if self.keys is None else self.keys.shape[1])
        kept = {}
        for bucket in self.buckets:
            for head in bucket.heads.tolist():
                kept[head] = bucket.positions.numel()
        return [kept[head] for head in sorted(kept)]

    # The runner's batch operations do not apply to a one-row compressed cache.
    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.compressed:
            raise BabelheadsError("Compressed caches hold one row; they cannot be re-batched.")
        super().batch_select_indices(indices)

    def crop(self, tokens_to_remove: int) -> None:
        if self.compressed:
            raise BabelheadsError("A compressed cache cannot be cropped.")
        self.cumulative_length -= abs(tokens_to_remove) if self.is_initialized else 0
        super().crop(tokens_to_remove)


class OwnedSlidingWindowLayer(DynamicSlidingWindowLayer):
    """transformers' sliding-window layer, keeping a copy of its window instead of a view into the
    last forward pass's keys (which would keep a whole prefill alive and make bytes unmeasurable)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        full_keys, full_values = super().update(key_states, value_states, *args, **kwargs)
        self.keys, self.values = self.keys.clone(), self.values.clone()
        return full_keys, full_values

    def tensors(self) -> list[torch.Tensor]:
        return [] if not self.is_initialized or self.keys is None else [self.keys, self.values]


def compressible_cache(model: torch.nn.Module) -> DynamicCache:
    """The model's usual cache: full-attention layers become :class:`HeadCompressedLayer`, sliding ones
    :class:`OwnedSlidingWindowLayer` with the model's window."""
    cache = DynamicCache(config=model.config)
    cache.layers = [
        OwnedSlidingWindowLayer(layer.sliding_window)
        if getattr(layer, "is_sliding", False)
        else HeadCompressedLayer()
        for layer in cache.layers
    ]
    return cache


def fork(cache: DynamicCache) -> DynamicCache:
    """A cache sharing ``cache``'s tensors with layers of its own: compressing or extending the fork
    never touches the original (layers replace tensors, they never write into them). Fork an
    uncompressed cache: buckets would be shared."""
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked


def compressed_layers(cache: DynamicCache) -> dict[int, HeadCompressedLayer]:
    return {
        index: layer for index, layer in enumerate(cache.layers) if isinstance(layer, HeadCompressedLayer)
    }


def layer_bytes(cache: DynamicCache) -> list[int]:
    """Per layer, the stored K and V elements times the element size: what the cache must hold."""
    return [
        sum(tensor.numel() * tensor.element_size() for tensor in layer.tensors()) for layer in cache.layers
    ]


def analytic_bytes(cache: DynamicCache) -> int:
    return sum(layer_bytes(cache))


def storage_bytes(cache: DynamicCache) -> int:
    """The bytes of the distinct storages the cache's tensors hold: a view counts its whole storage,
    so this equals :func:`analytic_bytes` only when nothing evicted is kept alive."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        for tensor in layer.tensors():
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
