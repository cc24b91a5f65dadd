"""The instrument attached to a model: what it records, which gates it applies, in which phase."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from babelheads.errors import UnsupportedModelError
from babelheads.heads import HeadLayout
from babelheads.probe.attention import ATTENTION_NAME, PROBE_ATTRIBUTE
from babelheads.probe.gates import PHASES, HeadGates


@dataclass(frozen=True)
class ProbeSettings:
    """top_k : peaks kept per head and step. sink_tokens : positions below this are never a peak
    (they still take their share of the softmax); 0 keeps every position, as the paper does."""

    top_k: int = 4
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1. Got {self.top_k} instead.")
        if self.sink_tokens < 0:
            raise ValueError(f"sink_tokens must be >= 0. Got {self.sink_tokens} instead.")


@dataclass
class StepRecords:
    """Where every query head looked, one row per recorded forward pass (decode step).

    positions : int64 array of shape (steps, batch, layers, heads, top_k), absolute token positions,
        best first; -1 where a head saw fewer than top_k keys.
    weights : float32 array of the same shape, the softmax weight at each position.
    """

    positions: np.ndarray
    weights: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.positions.shape[0]


class Instrument:
    """Records per-head attention peaks and applies per-head gates, through the registered function.

    Attach it to a model loaded with ``attn_implementation="babelheads"``. With no gates and no
    recording it only counts calls, and the model computes exactly what sdpa computes.
    """

    def __init__(self, model: torch.nn.Module, layout: HeadLayout, settings: ProbeSettings | None = None):
        self.model = model
        self.layout = layout
        self.settings = settings or ProbeSettings()
        self.gates: HeadGates | None = None
        self.phase: str = "prefill"
        self.position: int | None = None
        self.is_recording = False
        self.layer_calls = [0] * layout.num_layers
        self._rows: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(layout.num_layers)]
        self._modules = _attention_modules(model, layout)
        if model.config._attn_implementation != ATTENTION_NAME:
            model.set_attn_implementation(ATTENTION_NAME)
        for module in self._modules:
            setattr(module, PROBE_ATTRIBUTE, self)

    def detach(self) -> None:
        for module in self._modules:
            if getattr(module, PROBE_ATTRIBUTE, None) is self:
                delattr(module, PROBE_ATTRIBUTE)

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}. Got {phase!r} instead.")
        self.phase = phase

    @contextmanager
    def gated(self, gates: HeadGates | None) -> Iterator[None]:
        previous, self.gates = self.gates, gates
        try:
            yield
        finally:
            self.gates = previous

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record the last query row of every forward pass inside the block."""
        self._rows = [[] for _ in range(self.layout.num_layers)]
        self.is_recording = True
        try:
            yield
        finally:
            self.is_recording = False

    def take_records(self) -> StepRecords:
        """Stack what was recorded since ``recording()`` began; one device-to-host copy."""
        counts = {len(rows) for rows in self._rows}
        if counts != {len(self._rows[0])}:
            raise RuntimeError(f"Layers recorded different numbers of steps: {sorted(counts)}.")
        if not self._rows[0]:
            empty = np.zeros((0, 1, self.layout.num_layers, self.layout.num_heads, self.settings.top_k))
            return StepRecords(empty.astype(np.int64), empty.astype(np.float32))
        positions = torch.stack([torch.stack([p for p, _ in rows]) for rows in self._rows], dim=2)
        weights = torch.stack([torch.stack([w for _, w in rows]) for rows in self._rows], dim=2)
        self._rows = [[] for _ in range(self.layout.num_layers)]
        return StepRecords(positions.cpu().numpy(), weights.float().cpu().numpy())

    def record_last_row(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        softcap: float | None,
        sinks: torch.Tensor | None,
        last_position: torch.Tensor,
    ) -> None:
        """Attention of the last query row of every head, reduced to its top-k peaks.

        query : (batch, heads, q_len, head_dim); key : (batch, kv_heads, kv_len, head_dim), a contiguous
        run of positions ending at ``last_position`` (full caches and sliding-window caches both are).
        Costs O(heads x kv_len) memory: the row is never materialised for more than one query. The
        logits are computed in the model's dtype, as the model does, and only they are upcast: no fp32
        copy of the key cache per step. ``sinks`` (GPT-OSS) take their share of the softmax.
        """
        batch, heads, _, head_dim = query.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        scale = head_dim**-0.5 if scaling is None else scaling
        q = query[:, :, -1, :].reshape(batch, kv_heads, heads // kv_heads, head_dim)
        logits = torch.matmul(q, key.transpose(-1, -2)).reshape(batch, heads, kv_len).float() * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if attention_mask is not None:
            row = attention_mask[:, :, -1, :]
            if row.shape[-1] != kv_len:
                raise RuntimeError(f"Mask covers {row.shape[-1]} keys but the layer has {kv_len}.")
            if row.dtype == torch.bool:
                logits = logits.masked_fill(~row, float("-inf"))
            else:
                logits = logits + row.float()
        if sinks is not None:
            sink = sinks.float().view(1, heads, 1).expand(batch, heads, 1)
            weights = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :kv_len]
        else:
            weights = torch.softmax(logits, dim=-1)
        first_position = last_position.view(batch, 1, 1) - (kv_len - 1)
        ranked = weights
        if self.settings.sink_tokens:
            slots = torch.arange(kv_len, device=weights.device).view(1, 1, kv_len)
            ranked = weights.masked_fill(first_position + slots < self.settings.sink_tokens, -1.0)
        k = min(self.settings.top_k, kv_len)
        top_weights, top_slots = ranked.topk(k, dim=-1)
        positions = torch.where(top_weights >= 0, top_slots + first_position, -1)
        top_weights = top_weights.clamp_min(0.0)
        if k < self.settings.top_k:
            pad = self.settings.top_k - k
            positions = torch.nn.functional.pad(positions, (0, pad), value=-1)
            top_weights = torch.nn.functional.pad(top_weights, (0, pad), value=0.0)
        self._rows[layer].append((positions, top_weights))

    def check_routing(self, input_ids: torch.Tensor) -> None:
        """Run one short forward pass and fail clearly unless every layer went through the instrument."""
        self.layer_calls = [0] * self.layout.num_layers
        with torch.no_grad():
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        silent = [layer for layer, calls in enumerate(self.layer_calls) if calls == 0]
        if silent:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: layers {silent} do not call transformers' attention "
                "interface, so babelheads cannot see their heads. Use a model whose attention goes "
                "through ALL_ATTENTION_FUNCTIONS (Llama, Qwen2/3, Gemma 2/3, Phi-3, Mistral, ...)."
            )


def _attention_modules(model: torch.nn.Module, layout: HeadLayout) -> list[torch.nn.Module]:
    modules = [
        module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "layer_idx", None), int)
        and name.endswith(("self_attn", "attn", "attention"))
    ]
    layers = sorted(module.layer_idx for module in modules)
    if layers != list(range(layout.num_layers)):
        raise UnsupportedModelError(
            f"{type(model).__name__}: found attention modules for layers {layers[:8]}..., expected one per "
            f"layer 0..{layout.num_layers - 1}. babelheads supports decoder models whose attention modules "
            "carry a layer_idx and call transformers' attention interface."
        )
    return modules
