"""Keys that come in buckets: KV heads of one layer holding different positions (a compressed cache,
``babelheads.kvcache``). Each bucket is attended exactly, with the causal mask rebuilt from the
absolute positions it holds, since transformers' mask describes one contiguous run of keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from babelheads.probe.eager import eager_attention


@dataclass
class Bucket:
    """KV heads ``heads`` (indices within the layer) holding keys at absolute ``positions``."""

    heads: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


@dataclass
class BucketedKV:
    """A compressed layer's keys for one forward pass: its buckets, and the absolute positions of the
    pass's tokens (the queries)."""

    buckets: list[Bucket]
    query_positions: torch.Tensor
    num_kv_heads: int


def query_heads(bucket: Bucket, group: int) -> torch.Tensor:
    """The query heads that read the bucket's KV heads (query head q reads KV head q // group)."""
    offsets = torch.arange(group, device=bucket.heads.device)
    return (bucket.heads.view(-1, 1) * group + offsets.view(1, -1)).reshape(-1)


def bucketed_attention(
    query: torch.Tensor,
    kv: BucketedKV,
    scaling: float,
    softcap: float | None,
    sinks: torch.Tensor | None,
    keep_weights: bool,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """query : (batch, heads, q_len, head_dim). Returns the output (batch, q_len, heads, head_dim) and,
    with ``keep_weights``, per bucket (query heads, last query row's weights (batch, n, keys), key
    positions)."""
    batch, heads, q_len, head_dim = query.shape
    group = heads // kv.num_kv_heads
    output = query.new_zeros(batch, q_len, heads, head_dim)
    rows = []
    for bucket in kv.buckets:
        chosen = query_heads(bucket, group)
        visible = bucket.positions.view(1, -1) <= kv.query_positions.view(-1, 1)
        result = eager_attention(
            query[:, chosen],
            bucket.keys,
            bucket.values,
            visible.view(1, 1, q_len, -1),
            scaling,
            softcap,
            None if sinks is None else sinks[chosen],
            keep_weights=keep_weights,
        )
        out, weights = result if keep_weights else (result, None)
        output[:, :, chosen] = out.to(output.dtype)
        if keep_weights:
            rows.append((chosen, weights[:, :, -1], bucket.positions))
    return output, rows
