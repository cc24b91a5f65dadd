"""Per-sample head scores of a detection run as matrices, and their bootstrap over samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import AggregateSettings, used_samples
from babelheads.analysis.stats import LEVEL, bootstrap_statistics, percentiles
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
    level: float = LEVEL,
) -> pd.DataFrame:
    """Percentile intervals over samples (each condition's drawn on its own) for every value
    ``statistic`` returns from mean scores.

    Returns a frame with columns statistic, value (on the full data), lo, hi, n (the fewest samples
    of any condition), replicates.
    """
    table = bootstrap_statistics(
        matrix,
        lambda drawn: statistic(drawn.mean()),
        lambda drawn, rng: drawn.resample(rng),
        replicates,
        seed,
        percentiles(level),
    )
    table.insert(4, "n", min(matrix.counts().values(), default=0))
    return table
