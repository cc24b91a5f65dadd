"""Prefill many prompts, computing each shared token prefix once.

Prompts are prefilled in sorted token order, so every prompt shares its longest common prefix with a
recent one (the template head plus the haystack up to the needle, for NIAH). The cache then rewinds to
that prefix and only the rest is computed. Full-attention layers rewind by cropping. Sliding-window
layers keep only their last window and cannot be cropped once it is full, so their state is snapshotted
at the positions where later prompts branch off. transformers' dynamic layers never write into a tensor
they hold (every update concatenates into a new one), so a snapshot holds references, not copies: a
window per sliding layer at most.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from babelheads.runner.cache import fill_cache, new_cache

DEFAULT_MAX_SNAPSHOTS = 8


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    limit = min(len(a), len(b))
    for index in range(limit):
        if a[index] != b[index]:
            return index
    return limit


def branch_points(prefixes: Sequence[Sequence[int]]) -> list[set[int]]:
    """For prompt i of a sorted list, the positions where a later prompt leaves its prefix: the
    snapshots it should leave behind. They are the running minima of adjacent common prefixes."""
    adjacent = [common_prefix(a, b) for a, b in itertools.pairwise(prefixes)]
    points: list[set[int]] = []
    for index in range(len(prefixes)):
        found: set[int] = set()
        smallest = None
        for length in adjacent[index:]:
            smallest = length if smallest is None else min(smallest, length)
            found.add(smallest)
            if smallest == 0:
                break
        points.append(found)
    return points


@dataclass
class _Snapshot:
    position: int
    sliding: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)


class SharedPrefill:
    """One cache that walks from prompt to prompt, keeping what the next prompt shares.

    share=False prefills every prompt from scratch (the reference the shared path must equal).
    max_snapshots bounds the sliding-window states kept alive; when more branch points are pending,
    the shallowest is dropped and a later prompt recomputes from an earlier one (slower, still exact).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prefill_chunk: int,
        share: bool = True,
        max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
    ):
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be at least 1. Got {max_snapshots} instead.")
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.share = share
        self.max_snapshots = max_snapshots
        self.cache = new_cache(model)
        self.path: list[int] = []
        self.snapshots: list[_Snapshot] = []
        self.computed_tokens = 0
        self.reused_tokens = 0
        self._sliding = [
            i for i, layer in enumerate(self.cache.layers) if getattr(layer, "is_sliding", False)
        ]
        self._window = min((self.cache.layers[i].sliding_window for i in self._sliding), default=None)

    def prefill(self, prefix: Sequence[int], keep: Iterable[int] = ()) -> DynamicCache:
        """Make the cache hold exactly ``prefix``, snapshotting sliding layers at the ``keep`` positions
        (where later prompts branch off). The returned cache is the prefiller's own: read it, or hand
        it to decoding after :class:`babelheads.runner.cache.BatchCache` has taken it."""
        prefix = list(prefix)
        if not self.share:
            self._reset()
        start = self._rewind(common_prefix(self.path, prefix))
        self.reused_tokens += start
        sliding = self._sliding and self.share
        wanted = {point for point in keep if start < point <= len(prefix)} if sliding else set()
        for point in sorted(wanted | {len(prefix)}):
            self._extend(prefix, start, point)
            start = point
            if point in wanted:
                self._snapshot(point)
        self.path = prefix
        return self.cache

    def _reset(self) -> None:
        self.cache = new_cache(self.model)
        self.path, self.snapshots = [], []

    def _rewind(self, common: int) -> int:
        """Go back to at most ``common`` tokens; returns how many the cache now holds."""
        self.snapshots = [s for s in self.snapshots if s.position <= common]
        held = len(self.path)
        if common == held:
            return held
        if self._window is None or held < self._window:
            self.cache.crop(common - held)  # nothing has slid out of a window yet
            self.path = self.path[:common]
            return common
        base = self.snapshots[-1] if self.snapshots else None
        if base is None:
            self._reset()
            return 0
        for index, layer in enumerate(self.cache.layers):
            if index in base.sliding:
                layer.keys, layer.values, layer.cumulative_length = base.sliding[index]
            else:
                layer.crop(base.position - held)
        self.path = self.path[: base.position]
        return base.position

    def _extend(self, prefix: list[int], start: int, end: int) -> None:
        fill_cache(self.model, self.cache, prefix, start, end, self.prefill_chunk)
        self.computed_tokens += max(end - start, 0)

    def _snapshot(self, position: int) -> None:
        state = {
            index: (layer.keys, layer.values, layer.cumulative_length)
            for index, layer in enumerate(self.cache.layers)
            if index in self._sliding and layer.is_initialized
        }
        self.snapshots.append(_Snapshot(position, state))
        if len(self.snapshots) > self.max_snapshots:
            self.snapshots.pop(0)
