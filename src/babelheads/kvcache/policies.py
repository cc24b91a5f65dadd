"""What each KV head keeps of the context: the compression policies, all per KV head.

Query-head scores (a retrieval score, an importance) map to KV heads by ``max`` or ``mean`` over the
query heads that read each KV head. Policies act on full-attention layers only; sliding-window layers
keep their own window under every policy.

- ``full``: everything (the reference).
- ``head-split``: a share of the best-scored KV heads keep everything, the others ``sink`` +
  ``window`` positions (DuoAttention / RazorAttention).
- ``window``: every KV head keeps sink + the same number of recent positions, sized so the total
  kept equals head-split's (equal bytes).
- ``random-heads``: head-split with random full heads, as many per layer as head-split keeps there.
- ``head-budget``: head-split's total split over KV heads in proportion to their scores, each head
  at least ``floor`` x the mean (HeadKV / Ada-KV); a head keeps its sink, then by ``token_rule``:
  the most recent positions ('recent') or the keys of lowest L2 norm ('key-norm').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from babelheads.errors import BabelheadsError
from babelheads.kvcache.names import KV_MAPPINGS, TOKEN_RULES
from babelheads.kvcache.names import POLICIES as POLICIES  # re-exported: the experiment imports it here


@dataclass(frozen=True)
class PolicySettings:
    """sink, window : DuoAttention's NIAH setting (64, 256). floor : head-budget's least share of the
    mean budget. (How many KV heads stay whole is the run's ``shares``.)"""

    sink: int = 64
    window: int = 256
    kv_mapping: str = "max"
    floor: float = 0.2
    token_rule: str = "recent"

    def __post_init__(self) -> None:
        if self.sink < 0 or self.window < 1 or not 0 <= self.floor <= 1:
            raise BabelheadsError(
                f"sink must be >= 0, window >= 1 and floor in [0, 1]. Got {self.sink}, {self.window}, "
                f"{self.floor}."
            )
        if self.kv_mapping not in KV_MAPPINGS or self.token_rule not in TOKEN_RULES:
            raise BabelheadsError(
                f"kv_mapping must be one of {', '.join(KV_MAPPINGS)} and token_rule one of "
                f"{', '.join(TOKEN_RULES)}. Got {self.kv_mapping!r}, {self.token_rule!r}."
            )


def kv_scores(query_scores: np.ndarray, num_kv_heads: int, mapping: str) -> np.ndarray:
    """(layers, query heads) scores -> (layers, KV heads): query head q reads KV head q // group."""
    layers, heads = query_scores.shape
    grouped = np.nan_to_num(query_scores, nan=0.0).reshape(layers, num_kv_heads, heads // num_kv_heads)
    return grouped.max(axis=2) if mapping == "max" else grouped.mean(axis=2)


def full_heads(scores: np.ndarray, layers: list[int], share: float) -> set[tuple[int, int]]:
    """The round(share x count) best (layer, KV head) pairs of ``layers`` by score (ties: lower
    layer, then lower head)."""
    pairs = [(layer, head) for layer in layers for head in range(scores.shape[1])]
    count = round(share * len(pairs))
    ranked = sorted(pairs, key=lambda pair: (-scores[pair], pair))
    return set(ranked[:count])


def sink_and_recent(context: int, sink: int, recent: int) -> torch.Tensor:
    """The first ``sink`` and last ``recent`` positions of the context (all of it when they cover it)."""
    if sink + recent >= context:
        return torch.arange(context)
    return torch.cat([torch.arange(sink), torch.arange(context - recent, context)])


def head_split(
    layers: dict[int, int], context: int, full: set[tuple[int, int]], settings: PolicySettings
) -> dict[int, list[torch.Tensor]]:
    """``layers`` : full-attention layer -> its KV head count."""
    partial = sink_and_recent(context, settings.sink, settings.window)
    return {
        layer: [torch.arange(context) if (layer, head) in full else partial for head in range(count)]
        for layer, count in layers.items()
    }


def kept_total(keep: dict[int, list[torch.Tensor]]) -> int:
    return sum(len(positions) for heads in keep.values() for positions in heads)


def equal_window(
    layers: dict[int, int], context: int, total: int, settings: PolicySettings
) -> dict[int, list[torch.Tensor]]:
    """Every KV head keeps sink + the same recent count, as close to ``total`` kept positions as whole
    positions allow (never more)."""
    heads = sum(layers.values())
    per_head = min(context, total // max(heads, 1))
    sink = min(settings.sink, per_head)
    positions = sink_and_recent(context, sink, per_head - sink)
    return {layer: [positions] * count for layer, count in layers.items()}


def random_scope(layers: dict[int, int]) -> str:
    """'layer' (as many random heads per layer as the head set has there) when some layer has a choice
    of KV heads; 'model' (the same count over all full-attention layers) when every layer has one KV
    head (Gemma 3 270M), where matching per layer would redraw the head set itself."""
    return "layer" if max(layers.values(), default=1) > 1 else "model"


def random_full(layers: dict[int, int], full: set[tuple[int, int]], seed: int) -> set[tuple[int, int]]:
    """Random KV heads to keep whole, as many as ``full`` has, matched per layer or over the model
    (:func:`random_scope`). The draw depends on the seed and the counts only, so it is the same for
    every sample of a language and share."""
    rng = np.random.default_rng(seed)
    if random_scope(layers) == "model":
        pairs = [(layer, head) for layer, count in layers.items() for head in range(count)]
        return {pairs[index] for index in rng.choice(len(pairs), len(full), replace=False)}
    drawn: set[tuple[int, int]] = set()
    for layer, count in layers.items():
        wanted = sum(1 for chosen_layer, _ in full if chosen_layer == layer)
        drawn |= {(layer, int(head)) for head in rng.choice(count, wanted, replace=False)}
    return drawn


def random_split(
    layers: dict[int, int], context: int, full: set[tuple[int, int]], settings: PolicySettings, seed: int
) -> dict[int, list[torch.Tensor]]:
    """Head-split with random full heads (:func:`random_full`)."""
    return head_split(layers, context, random_full(layers, full, seed), settings)


def _proportional(weights: np.ndarray, total: int, floor: float, cap: int) -> np.ndarray:
    """``total`` split over heads: ``floor`` x the mean each, the rest in proportion to ``weights``;
    what a head cannot hold beyond ``cap`` goes to the others in the same proportions (so the total
    is kept whenever the heads can hold it), rounded down."""
    count = len(weights)
    mean = total / count
    budgets = np.full(count, min(floor * mean, cap), dtype=float)
    spare = max(total - budgets.sum(), 0.0)
    open_ = budgets < cap
    while spare > 1e-9 and open_.any():
        share = weights * open_
        share = share / share.sum() if share.sum() > 0 else open_ / open_.sum()
        budgets = budgets + share * spare
        spare = float(np.clip(budgets - cap, 0, None).sum())
        budgets = np.minimum(budgets, cap)
        open_ = budgets < cap
    return np.floor(budgets + 1e-9)


def head_budget(
    layers: dict[int, int],
    context: int,
    scores: np.ndarray,
    total: int,
    settings: PolicySettings,
    keys: dict[int, torch.Tensor] | None = None,
) -> dict[int, list[torch.Tensor]]:
    """``total`` kept positions split over KV heads in proportion to their scores, each at least
    ``floor`` x the mean share and at most the context; ``keys`` (layer -> (kv heads, context, dim))
    for the key-norm rule."""
    pairs = [(layer, head) for layer, count in layers.items() for head in range(count)]
    weights = np.array([max(float(scores[pair]), 0.0) for pair in pairs])
    budgets = _proportional(weights, total, settings.floor, context).astype(int)
    keep: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for (layer, head), budget in zip(pairs, budgets, strict=True):
        sink = min(settings.sink, int(budget))
        rest = int(budget) - sink
        if settings.token_rule == "recent" or keys is None:
            keep[layer].append(sink_and_recent(context, sink, rest))
            continue
        norms = keys[layer][head, sink:context].float().norm(dim=-1)
        lowest = torch.argsort(norms, stable=True)[:rest] + sink  # low-norm keys draw the attention
        # on the CPU, where the kept positions are used (the keys may sit on a GPU)
        keep[layer].append(torch.cat([torch.arange(sink), lowest.sort().values.cpu()]))
    return keep
