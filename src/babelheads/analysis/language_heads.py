"""LAHIS head importance from per-text gate gradients, and the language heads it selects.

Importance (Liu et al., arXiv 2511.07498) scores each query head h for a language from the gradient
g = dL/dm_h of the causal-LM loss with respect to a gate m_h on the head's output:

- ``paper``: E_x[ |m_h g| 1(g < 0) ], the expected gradient magnitude where removing the head hurts;
- ``code``: the released code's mean(1000 |g| m_h) x mean(1(g m_h < 0)), two averages multiplied.

With gates fixed at 1 (the default) m_h = 1; the released code's drifting gates are recorded per text.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from babelheads.errors import BabelheadsError
from babelheads.heads import HeadLayout, head_label

FORMULAS = ("paper", "code")
ROLES = ("general", "specific")


def importance_scores(gradients: pd.DataFrame) -> pd.DataFrame:
    """gradients : one row per (text, head) with sample_id, language, layer, head, gradient, gate.
    Returns one row per (language, head): both formulas, and the share of texts with g < 0."""
    frame = gradients.copy()
    signed = frame["gradient"] * frame["gate"]
    frame["paper"] = (signed.abs() * (frame["gradient"] < 0)).astype(float)
    frame["magnitude"] = 1000.0 * frame["gradient"].abs() * frame["gate"]
    frame["negative"] = (signed < 0).astype(float)
    grouped = frame.groupby(["language", "layer", "head"], sort=True)
    table = grouped.agg(
        paper=("paper", "mean"),
        magnitude=("magnitude", "mean"),
        negative_share=("negative", "mean"),
        texts=("sample_id", "nunique"),
    ).reset_index()
    table["code"] = table["magnitude"] * table["negative_share"]
    return table[["language", "layer", "head", "paper", "code", "negative_share", "texts"]]


def heads_per_language(total_heads: int, share: float) -> int:
    """n = int(L x H x p), at least 1 (LAHIS: p = 0.02, 20 heads of a 32 x 32 model)."""
    return max(1, int(total_heads * share))


def default_min_languages(languages: int) -> int:
    """LAHIS counts a head as general when it is a candidate in 4 of its 5 languages: at least 80 % of
    them (3 of 3, 4 of 4 or 5, 8 of 10), and at least 2."""
    return max(2, math.ceil(0.8 * languages - 1e-9))


def select_language_heads(
    importance: pd.DataFrame,
    formula: str = "paper",
    percentile: float = 96.0,
    min_languages: int | None = None,
    share: float = 0.02,
) -> pd.DataFrame:
    """Candidates: heads strictly above the ``percentile`` of their language's scores. General: the
    candidates of at least ``min_languages`` languages. Specific: each language's other candidates, its
    top n = int(L x H x share) by score (fewer when fewer candidates remain: the summary says so). One
    row per (language, head) in either role, with its rank."""
    if formula not in FORMULAS:
        raise BabelheadsError(f"Unknown formula {formula!r}. Use one of: {', '.join(FORMULAS)}.")
    if not 0 < percentile < 100:
        raise BabelheadsError(f"--percentile must lie in (0, 100). Got {percentile}.")
    languages = sorted(importance["language"].unique())
    needed = default_min_languages(len(languages)) if min_languages is None else min_languages
    if not 1 <= needed <= len(languages):
        raise BabelheadsError(
            f"--min-languages {needed} is impossible with {len(languages)} languages; "
            f"use 1 to {len(languages)}."
        )
    total = int(importance.groupby("language").size().iloc[0])
    limit = heads_per_language(total, share)
    candidates: dict[str, pd.DataFrame] = {}
    for code in languages:
        scores = importance[importance["language"] == code]
        threshold = np.percentile(scores[formula].to_numpy(), percentile)
        candidates[code] = scores[scores[formula] > threshold].sort_values(formula, ascending=False)
    counts: dict[tuple[int, int], int] = {}
    for frame in candidates.values():
        for key in zip(frame["layer"], frame["head"], strict=True):
            counts[key] = counts.get(key, 0) + 1
    general = {key for key, count in counts.items() if count >= needed}
    rows = []
    for code, frame in candidates.items():
        specific_rank = 0
        for layer, head, score in zip(frame["layer"], frame["head"], frame[formula], strict=True):
            key = (int(layer), int(head))
            if key in general:
                role, rank = "general", 0
            else:
                specific_rank += 1
                if specific_rank > limit:
                    continue
                role, rank = "specific", specific_rank
            rows.append(
                {
                    "language": code,
                    "layer": key[0],
                    "head": key[1],
                    "role": role,
                    "rank": rank,
                    "score": score,
                }
            )
    table = pd.DataFrame(rows, columns=["language", "layer", "head", "role", "rank", "score"])
    table.attrs.update(formula=formula, percentile=percentile, min_languages=needed, n=limit)
    return table


def heads_of(language_heads: pd.DataFrame, language: str | None, role: str) -> list[tuple[int, int]]:
    """(layer, head) pairs of one role: a language's specific heads best first, or the general heads."""
    if role not in ROLES:
        raise BabelheadsError(f"Unknown head role {role!r}. Use one of: {', '.join(ROLES)}.")
    frame = language_heads[language_heads["role"] == role]
    if role == "specific":
        if language not in set(language_heads["language"]):
            known = ", ".join(sorted(language_heads["language"].unique()))
            raise BabelheadsError(f"No language heads for {language!r}. This run has: {known}.")
        frame = frame[frame["language"] == language].sort_values("rank")
    pairs = list(dict.fromkeys(zip(frame["layer"].astype(int), frame["head"].astype(int), strict=True)))
    return pairs


def retrieval_overlap(
    retrieval: pd.DataFrame,
    language_heads: pd.DataFrame,
    importance: pd.DataFrame,
    total_heads: int,
    formula: str,
    threshold: float = 0.1,
) -> pd.DataFrame:
    """How retrieval heads (a detection run's ``scores``: language, layer, head, score) meet language
    heads, per language both runs have and over their union ('any'): the overlap of retrieval heads
    (score > ``threshold``) with the language's specific heads, with the general heads and with both;
    what chance gives (hypergeometric: the expected overlap of two random sets of these sizes, and the
    probability of at least the observed one); and the Spearman correlation of retrieval score with
    importance over every head."""
    from scipy.stats import hypergeom, spearmanr

    def heads(frame: pd.DataFrame) -> set[tuple[int, int]]:
        return set(zip(frame["layer"].astype(int), frame["head"].astype(int), strict=True))

    general = heads(language_heads[language_heads["role"] == "general"])
    # a language whose retrieval scores are NaN (no successful sample) has unknown heads, not none
    scored = retrieval.groupby("language")["score"].apply(lambda values: values.notna().any())
    unknown = sorted(set(scored.index[~scored]) & set(language_heads["language"]))
    shared = sorted(set(scored.index[scored]) & set(language_heads["language"]))
    rows = []
    for code in [*shared, "any"]:
        if code == "any":
            found = heads(retrieval[retrieval["language"].isin(shared) & (retrieval["score"] > threshold)])
            specific = heads(
                language_heads[
                    (language_heads["role"] == "specific") & language_heads["language"].isin(shared)
                ]
            )
            rho = np.nan
        else:
            found = heads(retrieval[(retrieval["language"] == code) & (retrieval["score"] > threshold)])
            specific = heads(
                language_heads[(language_heads["role"] == "specific") & (language_heads["language"] == code)]
            )
            # Only the two columns compared: both tables also carry a 'paper' column (the retrieval
            # variant and the LAHIS formula), which a full merge would rename to paper_x / paper_y.
            merged = retrieval.loc[retrieval["language"] == code, ["layer", "head", "score"]].merge(
                importance.loc[importance["language"] == code, ["layer", "head", formula]],
                on=["layer", "head"],
            )
            varied = len(merged) > 2 and merged["score"].nunique() > 1 and merged[formula].nunique() > 1
            rho = spearmanr(merged["score"], merged[formula]).statistic if varied else np.nan
        for role, chosen in (("specific", specific), ("general", general), ("language", specific | general)):
            overlap = len(found & chosen)
            rows.append(
                {
                    "language": code,
                    "language_heads": role,
                    "retrieval_heads": len(found),
                    "heads": len(chosen),
                    "overlap": overlap,
                    "expected_by_chance": len(found) * len(chosen) / total_heads,
                    "p_at_least": float(hypergeom.sf(overlap - 1, total_heads, len(found), len(chosen))),
                    "shared": " ".join(head_label(layer, head) for layer, head in sorted(found & chosen)),
                    "spearman_retrieval_vs_importance": rho,
                }
            )
    for code in unknown:
        rows += [
            {
                "language": code,
                "language_heads": role,
                "retrieval_heads": np.nan,
                "heads": np.nan,
                "overlap": np.nan,
                "expected_by_chance": np.nan,
                "p_at_least": np.nan,
                "shared": "",
                "spearman_retrieval_vs_importance": np.nan,
            }
            for role in ("specific", "general", "language")
        ]
    return pd.DataFrame(rows)


def random_head_sets(
    layout: HeadLayout, count: int, avoid: set[tuple[int, int]], draws: int, label: str
) -> list[tuple[tuple[int, int], ...]]:
    """``draws`` sets of ``count`` heads from outside ``avoid``, distinct from one another while the pool
    allows (two seeds that mask the same heads would count one baseline twice)."""
    pool = [(a.layer, a.head) for a in layout.addresses() if (a.layer, a.head) not in avoid]
    size = min(count, len(pool))
    rng = np.random.default_rng(list(label.encode()))
    possible = math.comb(len(pool), size)
    sets: list[tuple[tuple[int, int], ...]] = []
    while len(sets) < draws:
        chosen = tuple(sorted(pool[int(i)] for i in rng.choice(len(pool), size=size, replace=False)))
        if chosen not in sets or len(set(sets)) >= possible:
            sets.append(chosen)
    return sets


def exclusive_heads(
    sets: dict[str, list[tuple[int, int]]],
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, list[tuple[int, int]]]]:
    """Each language's heads that no other language in ``sets`` has, in their order, and the heads
    left out (shared with another language). A head specific to two languages belongs to neither: in a
    cross matrix it would mask the same head on and off the diagonal."""
    counts: dict[tuple[int, int], int] = {}
    for heads in sets.values():
        for head in dict.fromkeys(heads):
            counts[head] = counts.get(head, 0) + 1
    exclusive = {code: [head for head in heads if counts[head] == 1] for code, heads in sets.items()}
    left_out = {code: [head for head in heads if counts[head] > 1] for code, heads in sets.items()}
    return exclusive, left_out
