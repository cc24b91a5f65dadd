"""The registered attention function: sdpa for the output, plus the instrument's view of each head.

transformers 5 calls ``fn(module, query, key, value, attention_mask, scaling=..., **kwargs)`` with
query : Tensor of shape (batch, heads, q_len, head_dim),
key, value : Tensors of shape (batch, kv_heads, kv_len, head_dim), not repeated for grouped-query attention,
and expects (attn_output of shape (batch, q_len, heads, head_dim), weights or None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from babelheads.errors import UnsupportedModelError
from babelheads.probe.buckets import BucketedKV, bucketed_attention
from babelheads.probe.eager import eager_attention

if TYPE_CHECKING:
    from babelheads.probe.instrument import Instrument

ATTENTION_NAME = "babelheads"
PROBE_ATTRIBUTE = "_babelheads_instrument"


def probed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    if isinstance(key, BucketedKV):
        return _bucketed(module, query, key, scaling, softcap, sinks)
    if softcap is not None or sinks is not None:
        # sdpa refuses softcap and drops sinks silently: compute both exactly instead.
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        attn_output = eager_attention(query, key, value, attention_mask, scale, softcap, sinks)
    else:
        attn_output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    instrument: Instrument | None = getattr(module, PROBE_ATTRIBUTE, None)
    if instrument is None:
        return attn_output, None
    layer = module.layer_idx
    instrument.layer_calls[layer] += 1
    if instrument.is_recording:
        last_position = _last_query_position(kwargs.get("position_ids"), instrument, query)
        instrument.record_last_row(layer, query, key, attention_mask, scaling, softcap, sinks, last_position)
    gates = instrument.gates
    if gates is not None and gates.applies_to(instrument.phase):
        attn_output = gates.apply(layer, attn_output, value, attention_mask)
    return attn_output, None


def _bucketed(
    module: torch.nn.Module,
    query: torch.Tensor,
    kv: BucketedKV,
    scaling: float | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> tuple[torch.Tensor, None]:
    """A compressed layer: each bucket of KV heads attended exactly; its peaks recorded at the absolute
    positions it holds; scale gates applied as everywhere."""
    instrument: Instrument | None = getattr(module, PROBE_ATTRIBUTE, None)
    recording = instrument is not None and instrument.is_recording
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    attn_output, rows = bucketed_attention(query, kv, scale, softcap, sinks, recording)
    if instrument is None:
        return attn_output, None
    layer = module.layer_idx
    instrument.layer_calls[layer] += 1
    for heads, weights, positions in rows:
        instrument.record_peaks(layer, heads, weights, positions)
    gates = instrument.gates
    if gates is not None and gates.applies_to(instrument.phase):
        if gates.mode != "scale":
            raise UnsupportedModelError(
                "A compressed KV cache takes scale gates only (mask method 'gate'), not uniform attention."
            )
        attn_output = gates.apply(layer, attn_output, None, None)
    return attn_output, None


def _last_query_position(
    position_ids: torch.Tensor | None, instrument: Instrument, query: torch.Tensor
) -> torch.Tensor:
    """Absolute position of each batch row's last query, shape (batch,)."""
    if position_ids is not None:
        return position_ids[:, -1].to(query.device)
    if instrument.positions is None:
        raise RuntimeError("This model passes no position_ids to attention; set Instrument.positions.")
    return instrument.positions.to(query.device)


AttentionInterface.register(ATTENTION_NAME, probed_attention)
# Without registering the mask too, transformers passes no mask at all to a custom attention
# name: padding and sliding windows would silently vanish.
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
