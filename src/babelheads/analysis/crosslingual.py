"""Do retrieval heads speak the same language? Overlap, strength vs generality, rank agreement.

All functions take mean scores per head, ``scores : condition -> array of shape (n_heads,)``, so that
the same code gives the point estimate and every bootstrap replicate.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

RETRIEVAL_THRESHOLD = 0.1
STRONG_THRESHOLD = 0.5


def retrieval_sets(
    scores: dict[str, np.ndarray], threshold: float = RETRIEVAL_THRESHOLD
) -> dict[str, np.ndarray]:
    return {condition: values >= threshold for condition, values in scores.items()}


def membership(scores: dict[str, np.ndarray], threshold: float = RETRIEVAL_THRESHOLD) -> np.ndarray:
    """Boolean array (n_heads, n_conditions): head is a retrieval head in that condition."""
    return np.stack(list(retrieval_sets(scores, threshold).values()), axis=1)


def overlap_table(
    scores: dict[str, np.ndarray],
    layers: np.ndarray,
    labels: list[str],
    threshold: float = RETRIEVAL_THRESHOLD,
) -> pd.DataFrame:
    """Heads grouped by the exact set of languages in which they are retrieval heads (an UpSet table).

    Columns: languages ('de+en+zh'), n_languages, count, heads ('L-H' list), mean_layer.
    """
    member = membership(scores, threshold)
    conditions = list(scores)
    rows = []
    for size in range(len(conditions), 0, -1):
        for subset in combinations(range(len(conditions)), size):
            wanted = np.zeros(len(conditions), dtype=bool)
            wanted[list(subset)] = True
            chosen = np.flatnonzero((member == wanted).all(axis=1))
            rows.append(
                {
                    "languages": "+".join(conditions[index] for index in subset),
                    "n_languages": size,
                    "count": len(chosen),
                    "heads": [labels[index] for index in chosen],
                    "mean_layer": float(layers[chosen].mean()) if len(chosen) else np.nan,
                }
            )
    return pd.DataFrame(rows)


def overlap_statistics(
    scores: dict[str, np.ndarray],
    layers: np.ndarray,
    threshold: float = RETRIEVAL_THRESHOLD,
    strong: float = STRONG_THRESHOLD,
) -> dict[str, float]:
    """Finding 1 and 2 in numbers.

    shared_share : retrieval heads in every language / retrieval heads in any language.
    specific_share : retrieval heads in exactly one language / in any.
    mean_layer_shared, mean_layer_specific : where they sit (Finding 1: specific heads sit later).
    strong_shared_share : heads scoring >= ``strong`` in some language that are retrieval heads in all.
    """
    member = membership(scores, threshold)
    count = member.sum(axis=1)
    any_ = count > 0
    shared = count == member.shape[1]
    specific = count == 1
    peak = np.max(np.stack(list(scores.values()), axis=1), axis=1)
    strong_heads = peak >= strong
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "retrieval_heads": float(any_.sum()),
            "shared_share": float(shared.sum() / any_.sum()) if any_.any() else np.nan,
            "specific_share": float(specific.sum() / any_.sum()) if any_.any() else np.nan,
            "mean_layer_shared": float(layers[shared].mean()) if shared.any() else np.nan,
            "mean_layer_specific": float(layers[specific].mean()) if specific.any() else np.nan,
            "strong_heads": float(strong_heads.sum()),
            "strong_shared_share": float((strong_heads & shared).sum() / strong_heads.sum())
            if strong_heads.any()
            else np.nan,
            # The findings' contrasts, computed inside each replicate so that they get their own interval.
            "layer_gap_specific_minus_shared": float(layers[specific].mean() - layers[shared].mean())
            if specific.any() and shared.any()
            else np.nan,
            "strong_minus_all_shared": float(
                (strong_heads & shared).sum() / strong_heads.sum() - shared.sum() / any_.sum()
            )
            if strong_heads.any()
            else np.nan,
        }


def generality_table(
    scores: dict[str, np.ndarray],
    layers: np.ndarray,
    heads: np.ndarray,
    threshold: float = RETRIEVAL_THRESHOLD,
) -> pd.DataFrame:
    """Strength vs generality per head: in how many languages it retrieves, and how strongly."""
    stacked = np.stack(list(scores.values()), axis=1)
    return pd.DataFrame(
        {
            "layer": layers,
            "head": heads,
            "n_languages": membership(scores, threshold).sum(axis=1),
            "max_score": stacked.max(axis=1),
            "mean_score": stacked.mean(axis=1),
        }
    )


def pair_subsets(a: np.ndarray, b: np.ndarray, threshold: float, strong: float) -> dict[str, np.ndarray]:
    """all heads; strong: >= ``strong`` in either; weak: retrieval heads in either but strong in neither."""
    peak = np.maximum(a, b)
    return {
        "all": np.ones(len(a), dtype=bool),
        "strong": peak >= strong,
        "weak": (peak >= threshold) & (peak < strong),
    }


def rank_agreement(
    scores: dict[str, np.ndarray], threshold: float = RETRIEVAL_THRESHOLD, strong: float = STRONG_THRESHOLD
) -> dict[str, float]:
    """Spearman and Kendall correlation and mean absolute rank difference, per language pair and subset.

    Ranks are over all heads (1 = highest score, ties averaged); correlations within a subset use the
    subset's scores. Keys read 'spearman|en-de|all'. Fewer than 3 heads, or no variation: NaN.
    """
    out: dict[str, float] = {}
    for first, second in combinations(list(scores), 2):
        a, b = scores[first], scores[second]
        rank_a, rank_b = stats.rankdata(-a), stats.rankdata(-b)
        for subset, mask in pair_subsets(a, b, threshold, strong).items():
            key = f"{first}-{second}|{subset}"
            out[f"heads|{key}"] = float(mask.sum())
            out[f"rank_diff|{key}"] = float(np.abs(rank_a - rank_b)[mask].mean()) if mask.any() else np.nan
            if mask.sum() < 3 or np.ptp(a[mask]) == 0 or np.ptp(b[mask]) == 0:
                out[f"spearman|{key}"] = out[f"kendall|{key}"] = np.nan
                continue
            out[f"spearman|{key}"] = float(stats.spearmanr(a[mask], b[mask]).statistic)
            out[f"kendall|{key}"] = float(stats.kendalltau(a[mask], b[mask]).statistic)
        pair = f"{first}-{second}"
        out[f"rank_diff_gap|{pair}|weak-strong"] = (
            out[f"rank_diff|{pair}|weak"] - out[f"rank_diff|{pair}|strong"]
        )
    for anchor in scores:
        others = [language for language in scores if language != anchor]
        for near, far in combinations(others, 2):
            gap = _spearman(out, anchor, near) - _spearman(out, anchor, far)
            out[f"spearman_gap|{anchor}:{near}>{far}|all"] = gap
    return out


def _spearman(statistics: dict[str, float], a: str, b: str) -> float:
    key = f"spearman|{a}-{b}|all"
    return statistics.get(key, statistics.get(f"spearman|{b}-{a}|all", np.nan))


def split_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """'spearman|en-de|all' -> columns measure, pair, subset."""
    parts = frame["statistic"].str.split("|", expand=True)
    return frame.assign(measure=parts[0], pair=parts[1], subset=parts[2])
