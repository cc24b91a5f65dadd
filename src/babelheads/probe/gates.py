"""Per-head gates: one multiplicative factor per query head on its output, before ``o_proj``.

A gate of 0 removes a head (ablation), 1 leaves it untouched, and a tensor with
``requires_grad=True`` gives soft masks and head-importance gradients; all three
are the same mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from babelheads.heads import HeadAddress, HeadLayout

PHASES = ("prefill", "decode")


@dataclass
class HeadGates:
    """values : Tensor of shape (num_layers, num_heads), applied in the forward ``phases``."""

    values: torch.Tensor
    phases: frozenset[str] = frozenset(PHASES)

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown or not self.phases:
            raise ValueError(
                f"Gate phases must be a non-empty subset of {PHASES}. Got {sorted(self.phases)}."
            )
        if self.values.ndim != 2:
            raise ValueError(f"Gate values must have shape (layers, heads). Got {tuple(self.values.shape)}.")

    @classmethod
    def ones(cls, layout: HeadLayout, phases: Iterable[str] = PHASES) -> HeadGates:
        return cls(torch.ones(layout.num_layers, layout.num_heads), frozenset(phases))

    @classmethod
    def mask(
        cls, layout: HeadLayout, heads: Iterable[HeadAddress], phases: Iterable[str] = PHASES
    ) -> HeadGates:
        """Hard 0/1 gates that remove ``heads`` and keep every other head."""
        values = torch.ones(layout.num_layers, layout.num_heads)
        for address in heads:
            layout.check(address)
            values[address.layer, address.head] = 0.0
        return cls(values, frozenset(phases))

    def applies_to(self, phase: str) -> bool:
        return phase in self.phases

    def layer(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        """The gate of ``layer`` shaped to broadcast over attn_output (batch, q_len, heads, head_dim)."""
        return self.values[layer].to(device=like.device, dtype=like.dtype).view(1, 1, -1, 1)
