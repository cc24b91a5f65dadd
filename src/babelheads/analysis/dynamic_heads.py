"""Per-step retrieval heads and how dynamic they are ("Retrieval Heads are Dynamic", Table 1).

A step's dynamic heads are the heads with S(x_t, h) = 1: top-1 attention on a needle token equal to the
emitted one (the events column ``needle_copy``; ``copy`` restricts it to the answer span, Wu et al.'s
rule). Statistics use the *retrieval steps*, the steps with at least one such head:

- Jaccard of each step's set with the static top-K heads (chosen on other samples);
- Jaccard between adjacent retrieval steps (t and t + 1 both retrieval steps);
- the entropy of how often each head is a dynamic head, against ln K (a fixed set of K heads).

Intervals resample samples (a sample's steps stay together), with one seeded generator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import AggregateSettings, ThinDataWarning, aggregate
from babelheads.analysis.stats import MIN_UNITS, percentile_interval
from babelheads.errors import TaskError
from babelheads.heads import flat_label

STEP_COLUMNS = ("needle_copy", "copy")


@dataclass(frozen=True)
class StepHeads:
    """index : sample_id, language, step per row; matrix : (rows, layers x heads), one column per head
    in layer-major order; ``column`` is the events column the matrix holds."""

    index: pd.DataFrame
    matrix: np.ndarray
    num_heads: int
    column: str

    def head_names(self) -> list[str]:
        return [flat_label(flat, self.num_heads) for flat in range(self.matrix.shape[1])]

    def rows_of(self, sample_ids: set[str]) -> StepHeads:
        keep = self.index["sample_id"].isin(sample_ids).to_numpy()
        return StepHeads(
            self.index[keep].reset_index(drop=True), self.matrix[keep], self.num_heads, self.column
        )


def step_heads(events: pd.DataFrame, samples: pd.DataFrame, column: str = "needle_copy") -> StepHeads:
    """Every (sample, step) of ``events`` with its value of ``column`` for every head."""
    if column not in events.columns or events[column].isna().any():
        raise ValueError(
            f"The events lack {column!r} (a run made before per-step scores were stored). Re-run it, or "
            "use the answer-span rule, --span answer."
        )
    layers, heads = int(events["layer"].max()) + 1, int(events["head"].max()) + 1
    ordered = events.sort_values(["sample_id", "step", "layer", "head"])
    values = ordered[column].to_numpy()
    matrix = values.reshape(-1, layers * heads)
    index = ordered.loc[ordered["layer"].eq(0) & ordered["head"].eq(0), ["sample_id", "step"]]
    languages = samples.drop_duplicates("sample_id").set_index("sample_id")["language"]
    index = index.assign(language=index["sample_id"].map(languages).to_numpy()).reset_index(drop=True)
    return StepHeads(index, matrix, heads, column)


def static_top(scores: pd.Series, k: int) -> np.ndarray:
    """The ``k`` best heads of per-head scores indexed by flat head, ties broken by head order."""
    finite = scores.dropna()
    order = np.lexsort((finite.index.to_numpy(), -finite.to_numpy()))
    return finite.index.to_numpy()[order[:k]]


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise |a & b| / |a | b| of boolean matrices; NaN where both rows are empty."""
    union = (a | b).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, (a & b).sum(axis=-1) / np.maximum(union, 1), np.nan)


def entropy(counts: np.ndarray) -> np.ndarray:
    """-sum p ln p of count vectors (last axis); NaN for an all-zero vector."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / total
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(total[..., 0] > 0, -terms.sum(axis=-1), np.nan)


@dataclass(frozen=True)
class SampleParts:
    """Per-sample sums from which every statistic is a ratio, so a bootstrap draw is a weighted sum."""

    static_sum: np.ndarray
    retrieval_steps: np.ndarray
    adjacent_sum: np.ndarray
    adjacent_pairs: np.ndarray
    set_size_sum: np.ndarray
    head_counts: np.ndarray


def sample_parts(steps: StepHeads, static: np.ndarray) -> tuple[list[str], SampleParts]:
    """The per-sample sums of ``steps`` (one language), against the static head set ``static``."""
    active = steps.matrix.astype(bool)
    static_row = np.zeros(active.shape[1], bool)
    static_row[static] = True
    retrieval = active.any(axis=1)
    with_static = jaccard(active, np.broadcast_to(static_row, active.shape))
    ids = steps.index["sample_id"].to_numpy()
    step_numbers = steps.index["step"].to_numpy()
    order = list(dict.fromkeys(ids))
    parts = {name: [] for name in SampleParts.__dataclass_fields__}
    for sample_id in order:
        rows = np.flatnonzero(ids == sample_id)
        rows = rows[np.argsort(step_numbers[rows])]
        kept = rows[retrieval[rows]]
        parts["static_sum"].append(with_static[kept].sum())
        parts["retrieval_steps"].append(len(kept))
        consecutive = (np.diff(step_numbers[rows]) == 1) & retrieval[rows[:-1]] & retrieval[rows[1:]]
        pairs = jaccard(active[rows[:-1]][consecutive], active[rows[1:]][consecutive])
        parts["adjacent_sum"].append(pairs.sum())
        parts["adjacent_pairs"].append(len(pairs))
        parts["set_size_sum"].append(active[kept].sum())
        parts["head_counts"].append(active[kept].sum(axis=0))
    return order, SampleParts(**{name: np.asarray(values, dtype=float) for name, values in parts.items()})


def weighted_statistics(parts: SampleParts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic for every row of ``weights`` (draws x samples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        steps = weights @ parts.retrieval_steps
        pairs = weights @ parts.adjacent_pairs
        return {
            "jaccard_static": (weights @ parts.static_sum) / steps,
            "jaccard_adjacent": (weights @ parts.adjacent_sum) / pairs,
            "entropy": entropy(weights @ parts.head_counts),
            "mean_set_size": (weights @ parts.set_size_sum) / steps,
        }


def dynamism(steps: StepHeads, static: np.ndarray, replicates: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The Table 1 statistics of one language's steps, each with a 95 % interval over samples.

    Rows: statistic, value, lo, hi, n (samples), reference (ln K for the entropy, 1 for the Jaccards:
    a static set would give them), retrieval_steps.
    """
    order, parts = sample_parts(steps, static)
    point = weighted_statistics(parts, np.ones((1, len(order))))
    draws = np.random.default_rng(seed).multinomial(
        len(order), np.full(len(order), 1 / len(order)), replicates
    )
    spread = weighted_statistics(parts, draws.astype(float)) if len(order) >= MIN_UNITS else {}
    references = {
        "jaccard_static": 1.0,
        "jaccard_adjacent": 1.0,
        "entropy": np.log(len(static)),
        "mean_set_size": np.nan,
    }
    rows = []
    for name, value in point.items():
        lo = hi = np.nan
        if name in spread:  # a draw without retrieval steps (or pairs) has no ratio: it does not count
            lo, hi = percentile_interval(spread[name][np.isfinite(spread[name])])
        rows.append(
            {
                "statistic": name,
                "value": float(value[0]),
                "lo": float(lo),
                "hi": float(hi),
                "n": len(order),
                "reference": float(references[name]),
                "retrieval_steps": int(parts.retrieval_steps.sum()),
            }
        )
    if len(order) < MIN_UNITS or parts.retrieval_steps.sum() == 0:
        warnings.warn(
            f"{len(order)} samples with {int(parts.retrieval_steps.sum())} retrieval steps: the dynamism "
            "statistics have no interval (NaN).",
            ThinDataWarning,
            stacklevel=2,
        )
    return pd.DataFrame(rows)


def retrieval_rankings(
    samples: pd.DataFrame, head_scores: pd.DataFrame, num_heads: int
) -> dict[str, pd.Series]:
    """Per language, every head's mean retrieval score (the paper's variant, successful samples)
    indexed by layer-major head index, best first, ties by head order. A language with no successful
    sample has no ranking (a warning), never an arbitrary one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThinDataWarning)  # reported below, per language
        scores = aggregate(samples, head_scores, AggregateSettings())[0]
    ranking = {}
    for language, group in scores.groupby("language"):
        flat = pd.Series(
            group["score"].to_numpy(), index=group["layer"].to_numpy() * num_heads + group["head"].to_numpy()
        )
        if flat.isna().all():
            warnings.warn(
                f"{language}: no successful sample to rank heads by, so no static heads: NaN.",
                ThinDataWarning,
                stacklevel=2,
            )
            continue
        ranking[language] = flat[static_top(flat, len(flat))]
    return ranking


def check_static_k(static_k: int, layout: dict, run: object) -> None:
    """--static-k above the model's heads would be cut to all of them without a word (and every
    statistic would then compare against every head); a run's manifest layout says how many there are."""
    total = int(layout["num_layers"]) * int(layout["num_heads"])
    if static_k > total:
        raise TaskError(
            f"--static-k must be between 0 and the model's {total} heads ({layout['num_layers']} layers "
            f"x {layout['num_heads']} heads, from {run}). Got {static_k}."
        )
