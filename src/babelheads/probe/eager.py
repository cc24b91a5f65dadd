"""Exact attention for the terms sdpa cannot take: logit soft-capping (Gemma 2) and sink logits (GPT-OSS).

sdpa refuses ``softcap`` and silently ignores ``s_aux``; this computes what the models' own eager code
computes, from the same (boolean or absent) mask the registered mask function builds for sdpa.
"""

from __future__ import annotations

import torch


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    keep_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """query : (batch, heads, q_len, head_dim); key, value : (batch, kv_heads, kv_len, head_dim).
    attention_mask : boolean (True = visible) or additive, broadcastable to (batch, heads, q_len, kv_len),
    or None for plain causal attention with the queries at the end of the keys.
    sinks : (heads,) logits of a virtual key that takes a share of the softmax and contributes no value.
    Returns the output of shape (batch, q_len, heads, head_dim), as attention functions do, and with
    ``keep_weights`` also the float32 weights (batch, heads, q_len, kv_len)."""
    batch, heads, q_len, _ = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    keys = key.repeat_interleave(group, dim=1)
    values = value.repeat_interleave(group, dim=1)
    logits = torch.matmul(query, keys.transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is None:
        if q_len > 1:
            rows = torch.arange(q_len, device=query.device).view(-1, 1) + (kv_len - q_len)
            visible = torch.arange(kv_len, device=query.device).view(1, -1) <= rows
            logits = logits.masked_fill(~visible, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attention_mask[..., -kv_len:], float("-inf"))
    else:
        logits = logits + attention_mask[..., -kv_len:]
    if sinks is not None:
        sink = sinks.to(logits.dtype).reshape(1, -1, 1, 1).expand(batch, -1, q_len, 1)
        combined = torch.cat([logits, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        weights = torch.softmax(combined.float(), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(logits.float(), dim=-1)
    output = torch.matmul(weights.to(values.dtype), values).transpose(1, 2).contiguous()
    return (output, weights) if keep_weights else output
