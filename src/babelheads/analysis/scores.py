"""Per-sample head scores of a detection run as matrices, and bootstrap intervals over samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.errors import BabelheadsError
from babelheads.runs import RunStore


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
        """Mean score per head; a condition with no sample scores 0 everywhere (nothing was copied)."""
        return {
            condition: values.mean(axis=0) if len(values) else np.zeros(len(self.layers))
            for condition, values in self.per_sample.items()
        }

    def resample(self, rng: np.random.Generator) -> ScoreMatrix:
        """Each condition's samples drawn with replacement, independently."""
        drawn = {
            condition: values[rng.integers(0, len(values), len(values))] if len(values) else values
            for condition, values in self.per_sample.items()
        }
        return ScoreMatrix(self.layers, self.heads, drawn)

    def labels(self) -> list[str]:
        return [f"{layer}-{head}" for layer, head in zip(self.layers, self.heads, strict=True)]


def score_matrix(store: RunStore, variant: str | None = None, score_on: str | None = None) -> ScoreMatrix:
    """The run's per-sample scores. By default the run's own variant and sample rule (success/all)."""
    config = store.manifest()["spec"]["config"]
    variant = variant or config["score"]
    score_on = score_on or config["score_on"]
    samples = store.table("samples")
    heads = store.table("head_scores")
    if samples.empty:
        raise BabelheadsError(f"{store.root} has no finished samples yet. Run detect first.")
    if score_on == "success":
        heads = heads[heads["sample_id"].isin(set(samples.loc[samples["success"], "sample_id"]))]
    order = store.derived("scores")[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    index = pd.MultiIndex.from_frame(order)
    per_sample = {}
    for condition in samples["language"].drop_duplicates():
        frame = heads[heads["language"] == condition]
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
