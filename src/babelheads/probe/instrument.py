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
    mass_sink: int = 4
    """Region masses (:meth:`Instrument.set_regions`) leave out the first ``mass_sink`` positions ..."""
    mass_window: int = 32
    """... and the ``mass_window`` most recent ones, the attention sink and local window of Eq. 2 of
    "Retrieval Heads are Dynamic"."""

    def __post_init__(self) -> None:
        if self.mass_sink < 0 or self.mass_window < 0:
            raise ValueError(
                f"mass_sink and mass_window must be >= 0. Got {self.mass_sink} and {self.mass_window}."
            )
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
    mass : float32 array (steps, batch, layers, heads, regions), each head's total attention on each
        region set with :meth:`Instrument.set_regions`, or None when none was set.
    """

    positions: np.ndarray
    weights: np.ndarray
    mass: np.ndarray | None = None

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
        self.positions: torch.Tensor | None = None
        self.is_recording = False
        self.layer_calls = [0] * layout.num_layers
        self._step, self._steps_taken = 0, 0
        self._shape: tuple[int, ...] = ()
        self._live = torch.zeros(0, dtype=torch.long)
        self._rows: dict[torch.device, torch.Tensor] = {}
        self._buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layout.num_layers
        self._regions: torch.Tensor | None = None
        self._region_count = 0
        self._mass: list[torch.Tensor | None] = [None] * layout.num_layers
        self._modules = _attention_modules(model, layout)
        if model.config._attn_implementation != ATTENTION_NAME:
            model.set_attn_implementation(ATTENTION_NAME)
        for module in self._modules:
            setattr(module, PROBE_ATTRIBUTE, self)

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

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
    def recording(self, batch: int, max_steps: int) -> Iterator[None]:
        """Record the last query row of every forward pass inside the block, for ``batch`` rows and at
        most ``max_steps`` steps. Each layer writes into buffers allocated once on its own device (a
        model split over devices never stacks across them); nothing reaches the host until
        :meth:`take_records`. The decoding loop advances the step and names the live rows."""
        self._shape = (max_steps, batch, self.layout.num_heads, self.settings.top_k)
        self._buffers = [None] * self.layout.num_layers
        self._mass = [None] * self.layout.num_layers
        self._step, self._steps_taken = 0, 0
        self._rows = {}
        self._live = torch.arange(batch)
        self.is_recording = True
        try:
            yield
        finally:
            self.is_recording = False

    def set_regions(self, labels: torch.Tensor | None, count: int = 0) -> None:
        """Also record, while recording, each head's attention mass on ``count`` regions.

        labels : int64 (batch, positions): the region (0..count-1) of every absolute position of each
        row of the batch given to :meth:`recording`, -1 for positions in none. None stops it.
        """
        if labels is not None and (labels.ndim != 2 or int(labels.max()) >= count):
            raise ValueError(f"labels must be (batch, positions) with regions below {count}.")
        self._regions, self._region_count = labels, count if labels is not None else 0

    def advance(self, step: int, rows: torch.Tensor) -> None:
        """The next forward pass is decode ``step`` for batch rows ``rows`` (indices into the batch
        given to :meth:`recording`; rows that stopped have left the model's batch)."""
        if rows is not self._live:
            self._live, self._rows = rows, {}
        self._step = step
        self._steps_taken = max(self._steps_taken, step + 1)

    def take_records(self) -> StepRecords:
        """What was recorded, one host copy per layer: shape (steps, batch, layers, heads, top_k).
        Rows that stopped early keep -1 and weight 0 in later steps."""
        steps = self._steps_taken
        positions = np.full((steps, self._shape[1], self.layout.num_layers, *self._shape[2:]), -1, np.int64)
        weights = np.zeros(positions.shape, np.float32)
        for layer, buffers in enumerate(self._buffers):
            if buffers is not None:
                positions[:, :, layer] = buffers[0][:steps].cpu().numpy()
                weights[:, :, layer] = buffers[1][:steps].cpu().numpy()
        self._buffers = [None] * self.layout.num_layers
        mass = None
        if self._region_count:
            mass = np.zeros((*positions.shape[:-1], self._region_count), np.float32)
            for layer, buffer in enumerate(self._mass):
                if buffer is not None:
                    mass[:, :, layer] = buffer[:steps].cpu().numpy()
            self._mass = [None] * self.layout.num_layers
        return StepRecords(positions, weights, mass)

    def _layer_buffers(
        self, layer: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._buffers[layer] is None:
            self._buffers[layer] = (
                torch.full(self._shape, -1, dtype=torch.int64, device=device),
                torch.zeros(self._shape, dtype=torch.float32, device=device),
            )
        if device not in self._rows:
            self._rows[device] = self._live.to(device)
        return *self._buffers[layer], self._rows[device]

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
        visible = None
        if attention_mask is not None:
            row = attention_mask[:, :, -1, :]
            if row.shape[-1] != kv_len:
                raise RuntimeError(f"Mask covers {row.shape[-1]} keys but the layer has {kv_len}.")
            if row.dtype == torch.bool:
                visible = row
                logits = logits.masked_fill(~row, float("-inf"))
            else:
                visible = row > torch.finfo(row.dtype).min / 2
                logits = logits + row.float()
        if sinks is not None:
            sink = sinks.float().view(1, heads, 1).expand(batch, heads, 1)
            weights = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :kv_len]
        else:
            weights = torch.softmax(logits, dim=-1)
        first_position = last_position.view(batch, 1, 1) - (kv_len - 1)
        # Keys the mask hides (left padding, outside a sliding window) are never a peak: -1, weight 0.
        ranked = weights if visible is None else weights.masked_fill(~visible, -1.0)
        if self.settings.sink_tokens:
            slots = torch.arange(kv_len, device=weights.device).view(1, 1, kv_len)
            ranked = ranked.masked_fill(first_position + slots < self.settings.sink_tokens, -1.0)
        k = min(self.settings.top_k, kv_len)
        top_weights, top_slots = ranked.topk(k, dim=-1)
        positions = torch.where(top_weights >= 0, top_slots + first_position, -1)
        top_weights = top_weights.clamp_min(0.0)
        if k < self.settings.top_k:
            pad = self.settings.top_k - k
            positions = torch.nn.functional.pad(positions, (0, pad), value=-1)
            top_weights = torch.nn.functional.pad(top_weights, (0, pad), value=0.0)
        buffer_positions, buffer_weights, rows = self._layer_buffers(layer, positions.device)
        buffer_positions[self._step, rows] = positions
        buffer_weights[self._step, rows] = top_weights
        if self._regions is not None:
            self._record_mass(layer, weights, first_position.view(batch, 1), last_position, rows)

    def record_peaks(
        self, layer: int, heads: torch.Tensor, weights: torch.Tensor, positions: torch.Tensor
    ) -> None:
        """Peaks of the query heads ``heads`` from their last row's ``weights`` (batch, len(heads), keys)
        over keys at absolute ``positions`` (keys,): the path of a compressed cache, whose keys are not
        one contiguous run."""
        if self._regions is not None:
            raise UnsupportedModelError("Region masses are not recorded through a compressed KV cache.")
        ranked = weights
        if self.settings.sink_tokens:
            ranked = weights.masked_fill(positions.view(1, 1, -1) < self.settings.sink_tokens, -1.0)
        k = min(self.settings.top_k, weights.shape[-1])
        top_weights, top_slots = ranked.topk(k, dim=-1)
        found = torch.where(top_weights >= 0, positions[top_slots], -1)
        top_weights = top_weights.clamp_min(0.0)
        if k < self.settings.top_k:
            pad = self.settings.top_k - k
            found = torch.nn.functional.pad(found, (0, pad), value=-1)
            top_weights = torch.nn.functional.pad(top_weights, (0, pad), value=0.0)
        buffer_positions, buffer_weights, rows = self._layer_buffers(layer, weights.device)
        index = (self._step, rows.view(-1, 1), heads.to(rows.device).view(1, -1))
        buffer_positions[index] = found
        buffer_weights[index] = top_weights

    def _record_mass(
        self,
        layer: int,
        weights: torch.Tensor,
        first_position: torch.Tensor,
        last_position: torch.Tensor,
        rows: torch.Tensor,
    ) -> None:
        """Sum each head's weights by the region of the key's absolute position (weights are already 0
        where the mask hides a key)."""
        batch, heads, kv_len = weights.shape
        regions = self._regions.to(weights.device)[rows]
        absolute = first_position + torch.arange(kv_len, device=weights.device).view(1, kv_len)
        counted = (
            (absolute >= self.settings.mass_sink)
            & (absolute <= last_position.view(batch, 1) - self.settings.mass_window)
            & (absolute < regions.shape[1])
        )
        labels = regions.gather(1, absolute.clamp(0, regions.shape[1] - 1))
        labels = torch.where(counted, labels, -1) + 1  # bucket 0 collects what no region counts
        mass = weights.new_zeros(batch, heads, self._region_count + 1)
        mass.scatter_add_(2, labels.unsqueeze(1).expand(batch, heads, kv_len), weights)
        if self._mass[layer] is None:
            self._mass[layer] = torch.zeros(
                (self._shape[0], self._shape[1], heads, self._region_count), device=weights.device
            )
        self._mass[layer][self._step, rows] = mass[..., 1:]

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
