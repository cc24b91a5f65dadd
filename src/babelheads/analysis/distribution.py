"""The Wu et al. distribution of scores and the top heads, per language."""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = ("= 0", "(0, 0.1)", "[0.1, 0.5)", "[0.5, 1]")
RETRIEVAL_THRESHOLD = 0.1


def score_bin(scores: pd.Series) -> pd.Series:
    """The categories of Wu et al. Fig. 3; official-variant scores above 1 fall in the last bin. A NaN
    score (a language without a successful sample) falls in no bin: its label is None."""
    values = scores.to_numpy(dtype=float)
    labels = np.select([values == 0, values < 0.1, values < 0.5], BINS[:3], default=BINS[3]).astype(object)
    labels[np.isnan(values)] = None
    return pd.Series(labels, index=scores.index, dtype=object)


def distribution(scores: pd.DataFrame) -> pd.DataFrame:
    """Share of heads per bin and language. scores : the run's ``scores`` table. A language whose
    scores are NaN (no successful sample) gets a row of NaN, never shares of heads."""
    binned = scores.assign(bin=score_bin(scores["score"])).dropna(subset=["bin"])
    languages = list(dict.fromkeys(scores["language"]))
    counts = (
        binned.groupby(["language", "bin"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=languages, columns=list(BINS), fill_value=0)
    )
    total = counts.sum(axis=1)
    return counts.div(total.where(total > 0), axis=0).rename_axis(index="language", columns="bin")


def top_heads(scores: pd.DataFrame, language: str, count: int = 10) -> pd.DataFrame:
    """The ``count`` highest-scoring heads of ``language``, ties broken by address for a stable order."""
    frame = scores[scores["language"] == language]
    return frame.sort_values(["score", "layer", "head"], ascending=[False, True, True]).head(count)


def retrieval_head_share(scores: pd.DataFrame, threshold: float = RETRIEVAL_THRESHOLD) -> pd.Series:
    """Share of heads scoring >= ``threshold`` per language; NaN for a language whose scores are NaN."""
    is_retrieval = (scores["score"] >= threshold).astype(float).where(scores["score"].notna())
    return scores.assign(is_retrieval=is_retrieval).groupby("language", sort=True)["is_retrieval"].mean()
