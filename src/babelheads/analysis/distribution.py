"""The Wu et al. distribution of scores and the top heads, per language."""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = ("= 0", "(0, 0.1)", "[0.1, 0.5)", "[0.5, 1]")
RETRIEVAL_THRESHOLD = 0.1


def score_bin(scores: pd.Series) -> pd.Series:
    """The categories of Wu et al. Fig. 3; official-variant scores above 1 fall in the last bin."""
    values = scores.to_numpy()
    labels = np.select([values == 0, values < 0.1, values < 0.5], BINS[:3], default=BINS[3])
    return pd.Series(labels, index=scores.index)


def distribution(scores: pd.DataFrame) -> pd.DataFrame:
    """Share of heads per bin and language. scores : the run's ``scores`` table."""
    binned = scores.assign(bin=score_bin(scores["score"]))
    counts = (
        binned.groupby(["language", "bin"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(BINS), fill_value=0)
    )
    return counts.div(counts.sum(axis=1), axis=0)


def top_heads(scores: pd.DataFrame, language: str, count: int = 10) -> pd.DataFrame:
    """The ``count`` highest-scoring heads of ``language``, ties broken by address for a stable order."""
    frame = scores[scores["language"] == language]
    return frame.sort_values(["score", "layer", "head"], ascending=[False, True, True]).head(count)


def retrieval_head_share(scores: pd.DataFrame, threshold: float = RETRIEVAL_THRESHOLD) -> pd.Series:
    return scores.assign(is_retrieval=scores["score"] >= threshold).groupby("language")["is_retrieval"].mean()
