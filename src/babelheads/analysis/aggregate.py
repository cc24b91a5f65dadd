"""Per-sample head scores into per-language scores: the analysis settings, applied to stored tables.

The score variant, the samples averaged over and the success threshold are settings of this step, not
of the run: changing them re-aggregates what is stored and re-runs nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.errors import BabelheadsError, ThinDataWarning
from babelheads.scoring import SCORE_VARIANTS

SCORE_ON = ("success", "all")
KEYS = ["language", "layer", "head", "kv_head"]


@dataclass(frozen=True)
class AggregateSettings:
    """score : the variant reported as ``score`` (both are always kept). score_on : average over the
    successful samples (as the official code) or all. success_threshold : ROUGE-1 recall above it is a
    success. min_samples : a language averaged over fewer samples gets NaN, not a number."""

    score: str = "paper"
    score_on: str = "success"
    success_threshold: float = 0.5
    min_samples: int = 1

    def __post_init__(self) -> None:
        if self.score not in SCORE_VARIANTS:
            raise BabelheadsError(
                f"Unknown score variant {self.score!r}. Use one of: {', '.join(SCORE_VARIANTS)}."
            )
        if self.score_on not in SCORE_ON:
            raise BabelheadsError(f"score_on must be one of {SCORE_ON}. Got {self.score_on!r}.")
        if not 0.0 <= self.success_threshold < 1.0:
            raise BabelheadsError(f"success_threshold must lie in [0, 1). Got {self.success_threshold}.")
        if self.min_samples < 1:
            raise BabelheadsError(f"min_samples must be at least 1. Got {self.min_samples}.")


def completed(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples that ran (skipped ones are recorded with their reason, and count nowhere)."""
    if "status" not in samples:
        return samples
    return samples[samples["status"] == "ok"]


def with_success(samples: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``success`` recomputed at ``threshold`` from the stored ROUGE-1 recall (tasks without ROUGE keep
    their own success)."""
    frame = completed(samples).copy()
    if "rouge1_recall" in frame:
        frame["success"] = frame["rouge1_recall"] > threshold
    return frame


def used_samples(samples: pd.DataFrame, settings: AggregateSettings) -> pd.DataFrame:
    frame = with_success(samples, settings.success_threshold)
    return frame if settings.score_on == "all" else frame[frame["success"]]


def aggregate(
    samples: pd.DataFrame, head_scores: pd.DataFrame, settings: AggregateSettings
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(scores per query head, scores per KV head, notes).

    scores : language, layer, head, kv_head, paper, official, needle_attention, samples_used, score,
    variant. A language with fewer than ``min_samples`` used samples has NaN scores, a note and a
    ThinDataWarning. A KV head scores the maximum over the query heads that read it (RazorAttention).
    """
    used = used_samples(samples, settings)
    if head_scores.empty:  # every sample was skipped
        head_scores = pd.DataFrame(columns=[*KEYS, "sample_id", *SCORE_VARIANTS, "needle_attention"])
    grid = head_scores[KEYS].drop_duplicates()
    chosen = head_scores[head_scores["sample_id"].isin(set(used["sample_id"]))]
    scores = grid.merge(chosen.groupby(KEYS)[list(SCORE_VARIANTS)].mean().reset_index(), on=KEYS, how="left")
    # Where a head looks does not depend on the answer being right: averaged over every sample that ran.
    ran = head_scores[head_scores["sample_id"].isin(set(completed(samples)["sample_id"]))]
    scores = scores.merge(ran.groupby(KEYS)["needle_attention"].mean().reset_index(), on=KEYS, how="left")
    counts = used.groupby("language")["sample_id"].nunique()
    scores["samples_used"] = scores["language"].map(counts).fillna(0).astype(int)
    notes = []
    for language in grid["language"].drop_duplicates():
        count = int(counts.get(language, 0))
        if count < settings.min_samples:
            rule = "successful samples" if settings.score_on == "success" else "samples"
            notes.append(
                f"{language}: {count} {rule} (at least {settings.min_samples} needed): its scores are NaN, "
                "not zero"
            )
    thin = scores["samples_used"] < settings.min_samples
    scores.loc[thin, list(SCORE_VARIANTS)] = np.nan
    for note in notes:
        warnings.warn(note, ThinDataWarning, stacklevel=2)
    scores["score"] = scores[settings.score]
    scores["variant"] = settings.score
    scores = scores.sort_values(KEYS).reset_index(drop=True)
    kv = scores.groupby(["language", "layer", "kv_head"])[list(SCORE_VARIANTS)].max(min_count=1).reset_index()
    kv["score"] = kv[settings.score]
    kv["variant"] = settings.score
    return scores, kv, notes


def official_scores(
    samples: pd.DataFrame, head_scores: pd.DataFrame, settings: AggregateSettings, language: str
) -> dict[str, list[float]]:
    """One language's per-sample scores in the official form {"L-H": [score per used sample, ...]}."""
    from babelheads.heads import HeadAddress

    used = set(used_samples(samples, settings)["sample_id"])
    frame = head_scores[(head_scores["language"] == language) & head_scores["sample_id"].isin(used)]
    frame = frame.sort_values(["sample_id", "layer", "head"])
    per_head = frame.groupby(["layer", "head"])[settings.score].apply(list)
    heads = head_scores.loc[head_scores["language"] == language, ["layer", "head"]].drop_duplicates()
    return {
        str(HeadAddress(int(layer), int(head))): [float(value) for value in per_head.get((layer, head), [])]
        for layer, head in heads.sort_values(["layer", "head"]).itertuples(index=False)
    }
