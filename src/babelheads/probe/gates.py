"""Per-head gates: one factor per query head, applied to its output before ``o_proj``.

A gate of 0 removes a head (ablation), 1 leaves it untouched, and a tensor with
``requires_grad=True`` gives soft masks and head-importance gradients; all three
are the same mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from babelheads.heads import HeadAddress, HeadLayout

PHASES = ("prefill", "decode")
MODES = ("scale", "uniform")


@dataclass
class HeadGates:
    """values : Tensor of shape (num_layers, num_heads), applied in the forward ``phases``.

    mode 'scale' multiplies each head's output by its gate (0 removes the head; LAHIS and most
    head-importance work). mode 'uniform' gives ``g * out + (1 - g) * uniform``, where ``uniform`` is
    the head's output when it attends uniformly to every visible key: the official retrieval-head
    code's masking (a zeroed query), which it applies while decoding only, and so does this.

    Fixed values are copied to the model's device once, on first use: make new gates to change them.
    Trainable values (``requires_grad``) are read on every call, so their gradients reach them.
    """

    values: torch.Tensor
    phases: frozenset[str] = frozenset(PHASES)
    mode: str = "scale"
    _placed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.phases = frozenset(self.phases)
        unknown = set(self.phases) - set(PHASES)
        if unknown or not self.phases:
            raise ValueError(
                f"Gate phases must be a non-empty subset of {PHASES}. Got {sorted(self.phases)}."
            )
        if self.values.ndim not in (2, 3):
            raise ValueError(
                f"Gate values must have shape (layers, heads) or (batch, layers, heads). "
                f"Got {tuple(self.values.shape)}."
            )
        if self.mode not in MODES:
            raise ValueError(f"Gate mode must be one of {MODES}. Got {self.mode!r}.")
        if self.mode == "uniform" and "prefill" in self.phases:
            raise ValueError(
                "Uniform masking applies while decoding only (as in the official code). "
                "Use phases=('decode',)."
            )

    @classmethod
    def ones(cls, layout: HeadLayout, phases: Iterable[str] = PHASES) -> HeadGates:
        return cls(torch.ones(layout.num_layers, layout.num_heads), frozenset(phases))

    @classmethod
    def mask(
        cls,
        layout: HeadLayout,
        heads: Iterable[HeadAddress],
        phases: Iterable[str] = PHASES,
        mode: str = "scale",
    ) -> HeadGates:
        """Hard 0/1 gates that remove ``heads`` and keep every other head."""
        values = torch.ones(layout.num_layers, layout.num_heads)
        for address in heads:
            layout.check(address)
            values[address.layer, address.head] = 0.0
        return cls(values, frozenset(phases), mode)

    @classmethod
    def per_row(cls, rows: list[HeadGates | None], layout: HeadLayout, phase: str) -> HeadGates | None:
        """One gate set per batch row for ``phase``: a row without gates there gets ones (exactly the
        ungated output in both modes). None when no row is gated. Rows gated in ``phase`` must share
        a mode."""
        active = [gates for gates in rows if gates is not None and gates.applies_to(phase)]
        if not active:
            return None
        modes = {gates.mode for gates in active}
        if len(modes) > 1:
            raise ValueError(f"One batch cannot mix gate modes {sorted(modes)}.")
        ones = torch.ones(layout.num_layers, layout.num_heads)
        values = torch.stack(
            [ones if gates is None or not gates.applies_to(phase) else gates.values.float() for gates in rows]
        )
        return cls(values, frozenset({phase}), modes.pop())

    def select(self, rows: torch.Tensor) -> HeadGates:
        """The gates of some batch rows (rows that stopped decoding leave the batch)."""
        if self.values.ndim == 2:
            return self
        return HeadGates(self.values[rows.to(self.values.device)], self.phases, self.mode)

    def _on(self, like: torch.Tensor) -> torch.Tensor:
        return _placed_values(self, like)

    def applies_to(self, phase: str) -> bool:
        return phase in self.phases

    def apply(
        self, layer: int, attn_output: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Gate one layer. attn_output : (batch, q_len, heads, head_dim);
        value : (batch, kv_heads, kv_len, head_dim)."""
        values = self._on(attn_output)
        if values.ndim == 2:
            gate = values[layer].view(1, 1, -1, 1)
        else:
            if values.shape[0] != attn_output.shape[0]:
                raise ValueError(f"{values.shape[0]} gate rows for a batch of {attn_output.shape[0]}.")
            gate = values[:, layer].view(values.shape[0], 1, -1, 1)
        if self.mode == "scale":
            return attn_output * gate
        return gate * attn_output + (1 - gate) * _uniform_output(attn_output, value, attention_mask)


def _placed_values(gates: HeadGates, like: torch.Tensor) -> torch.Tensor:
    """The gate values on ``like``'s device and dtype, copied there once rather than per layer and step.
    A trainable gate is never cached: its gradient must flow to ``values`` itself."""
    if gates.values.requires_grad:
        return gates.values.to(device=like.device, dtype=like.dtype)
    key = (like.device, like.dtype)
    if key not in gates._placed:
        gates._placed[key] = gates.values.to(device=like.device, dtype=like.dtype)
    return gates._placed[key]


def _uniform_output(
    attn_output: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Each head's output under uniform attention over the keys visible to the single query."""
    batch, q_len, heads, head_dim = attn_output.shape
    if q_len != 1:
        raise ValueError("Uniform masking needs one query per forward pass (decoding).")
    kv_heads = value.shape[1]
    if attention_mask is None:
        mean = value.mean(dim=2)
    else:
        row = attention_mask[:, :, -1, :]
        visible = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
        weights = visible.to(value.dtype).expand(batch, kv_heads, -1)
        mean = torch.einsum("bhk,bhkd->bhd", weights, value) / weights.sum(-1, keepdim=True).clamp_min(1)
    group = heads // kv_heads
    return mean.repeat_interleave(group, dim=1).view(batch, 1, heads, head_dim).to(attn_output.dtype)
