"""Per-sample head scores of a detection run as matrices, and bootstrap intervals over samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import AggregateSettings, used_samples
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress


@dataclass
class ScoreMatrix:
    """Scores of every head in every sample, per condition (language, or 'en>zh').

    layers, heads : int arrays of shape (n_heads,), the head order shared by all conditions.
    per_sample : condition -> array of shape (n_samples, n_heads); scores of one variant.
    """

    layers: np.ndarray
    heads: np.ndarray
    per_sample: dict[str, np.ndarray]

    @property
    def conditions(self) -> list[str]:
        return list(self.per_sample)

    def mean(self) -> dict[str, np.ndarray]:
        """Mean score per head; NaN for a condition without samples (no data is not a score of 0)."""
        return {
            condition: values.mean(axis=0) if len(values) else np.full(len(self.layers), np.nan)
            for condition, values in self.per_sample.items()
        }

    def counts(self) -> dict[str, int]:
        return {condition: len(values) for condition, values in self.per_sample.items()}

    def subset(self, conditions: list[str]) -> ScoreMatrix:
        return ScoreMatrix(self.layers, self.heads, {key: self.per_sample[key] for key in conditions})

    def resample(self, rng: np.random.Generator) -> ScoreMatrix:
        """Each condition's samples drawn with replacement, independently."""
        drawn = {
            condition: values[rng.integers(0, len(values), len(values))] if len(values) else values
            for condition, values in self.per_sample.items()
        }
        return ScoreMatrix(self.layers, self.heads, drawn)

    def labels(self) -> list[str]:
        return [
            str(HeadAddress(int(layer), int(head)))
            for layer, head in zip(self.layers, self.heads, strict=True)
        ]


def score_matrix(
    samples: pd.DataFrame, head_scores: pd.DataFrame, settings: AggregateSettings, variant: str | None = None
) -> ScoreMatrix:
    """Per-sample scores of ``variant`` (default: the settings' score) over the samples the settings use.

    samples : a detection run's samples table; head_scores : its per-sample head scores.
    """
    variant = variant or settings.score
    if samples.empty:
        raise BabelheadsError("The run has no finished samples yet. Run detect first.")
    used = set(used_samples(samples, settings)["sample_id"])
    heads = head_scores[head_scores["sample_id"].isin(used)]
    order = head_scores[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    index = pd.MultiIndex.from_frame(order)
    per_sample = {}
    for condition in samples["language"].drop_duplicates():
        frame = heads[heads["language"] == condition]
        if frame.empty:
            per_sample[condition] = np.zeros((0, len(order)))
            continue
        wide = frame.pivot_table(
            index="sample_id", columns=["layer", "head"], values=variant, aggfunc="first"
        )
        wide = wide.reindex(columns=index, fill_value=0.0).sort_index()
        per_sample[condition] = wide.to_numpy(dtype=float)
    return ScoreMatrix(order["layer"].to_numpy(), order["head"].to_numpy(), per_sample)


def bootstrap(
    matrix: ScoreMatrix,
    statistic: Callable[[dict[str, np.ndarray]], dict[str, float]],
    replicates: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Percentile intervals over samples for every value ``statistic`` returns from mean scores.

    Returns a frame with columns statistic, value (on the full data), lo, hi, replicates.
    """
    point = statistic(matrix.mean())
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(replicates):
        values = statistic(matrix.resample(rng).mean())
        for name in point:
            draws[name].append(values.get(name, np.nan))
    tail = (1 - level) / 2 * 100
    rows = []
    for name, value in point.items():
        sample = np.asarray(draws[name], dtype=float)
        sample = sample[~np.isnan(sample)]
        lo, hi = np.percentile(sample, [tail, 100 - tail]) if len(sample) else (np.nan, np.nan)
        rows.append({"statistic": name, "value": value, "lo": lo, "hi": hi, "replicates": len(sample)})
    return pd.DataFrame(rows)


def mean_interval(
    values: np.ndarray, replicates: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile bootstrap interval; NaN for no (or only NaN) values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.isnan(values).all():
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), (replicates, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(values.mean()), float(lo), float(hi)


def difference_interval(
    first: np.ndarray, second: np.ndarray, replicates: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(first) - mean(second) for two independent samples, each resampled on its own, with a
    percentile bootstrap interval; NaN when either is empty."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(first) == 0 or len(second) == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    draws = first[rng.integers(0, len(first), (replicates, len(first)))].mean(axis=1) - second[
        rng.integers(0, len(second), (replicates, len(second)))
    ].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(first.mean() - second.mean()), float(lo), float(hi)
