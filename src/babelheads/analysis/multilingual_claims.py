"""The claims of Wu et al. (sparsity) and of the multilingual study (Findings 1-4) from detection runs.

Each contrast is computed on a parallel grid of cells (:mod:`cell_grid`), resampled by cell jointly
across languages; translation conditions are paired with their monolingual cells. Whatever is chosen
from data (a split, the source language's top heads) is chosen again in every replicate, on cells
other than the ones that measure it.

Findings 1-3 are tested against the null "every language uses the same heads": in each cell, the
languages' samples are handed to the languages in a random order, so each "language" becomes a mix
at the same cells and sample counts, and the statistic is recomputed. Observed minus exchanged is
what the languages differ by beyond sampling noise (heads near the threshold flip membership by
noise alone, so a raw shared share below 1 says nothing). Both sides are computed on the same
resampled cells in every replicate, so the bootstrap's own distortion of a thresholded statistic
cancels. (A split of one language's cells into parts gives the same null at fewer samples per part,
and its within-part resampling biases the interval away from its estimate; the exchange does not.)
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats

from babelheads.analysis.cell_grid import CellGrid
from babelheads.analysis.claims import (
    MULTILINGUAL,
    WU,
    Context,
    Measured,
    bootstrap_units,
    claim_rows,
    measured,
    nothing,
    register_claim,
    split_units,
)

SPARSE_SHARE = 0.05
BAND = (0.40, 0.70)
TOP_HEADS = 10
EXCHANGES = 20
"""Random exchanges of the languages' samples within cells averaged for a point estimate."""
EXCHANGES_PER_DRAW = 2
CELLS = "cells (length x depth x needle), drawn jointly across languages"

SPARSE = register_claim(
    "wu.sparse",
    WU,
    "Retrieval heads are sparse: fewer than 5 % of attention heads score >= 0.1.",
    figure="How many heads retrieve",
)
F1_PARTIAL = register_claim(
    "multilingual.f1_partial_sharing",
    MULTILINGUAL,
    "Only part of the retrieval heads are shared by all languages: "
    "fewer than sampling noise alone would leave.",
    figure="Which languages share retrieval heads",
)
F1_BAND = register_claim(
    "multilingual.f1_band",
    MULTILINGUAL,
    "40-70 % of the retrieval heads are shared by all languages.",
    figure="Which languages share retrieval heads",
)
F1_LATER = register_claim(
    "multilingual.f1_specific_later",
    MULTILINGUAL,
    "Language-specific retrieval heads sit in later layers than the heads shared by all languages.",
    figure="Which languages share retrieval heads",
)
F2_STRONG = register_claim(
    "multilingual.f2_strong_shared",
    MULTILINGUAL,
    "Strong retrieval heads (score >= 0.5) are shared by all languages more often than weak ones.",
    figure="Strength vs generality",
)
F3_DISTANCE = register_claim(
    "multilingual.f3_distance",
    MULTILINGUAL,
    "Head rankings agree more between English and German than between English and Chinese.",
    figure="Do languages rank heads alike",
)
F3_WEAK = register_claim(
    "multilingual.f3_weak_ranks",
    MULTILINGUAL,
    "Weak retrieval heads' ranks differ more between languages than strong heads' ranks.",
    figure="Do languages rank heads alike",
)
F4_FAILS = register_claim(
    "multilingual.f4_translation_fails",
    MULTILINGUAL,
    "Retrieval plus translation (answer asked in another language) "
    "is less accurate than monolingual retrieval.",
    figure="Retrieval + translation",
)
F4_INACTIVE = register_claim(
    "multilingual.f4_heads_inactive",
    MULTILINGUAL,
    "The source language's retrieval heads attend less to the needle under retrieval plus translation.",
    figure="Retrieval + translation",
)


def multilingual_claims(
    grid: CellGrid,
    languages: list[str],
    threshold: float,
    strong: float,
    replicates: int,
    seed: int,
    context: Context,
) -> list[tuple[dict, list[dict]]]:
    """Every claim's row and parts. ``languages`` : the monolingual conditions with enough successful
    samples to choose heads by (the others are named in the reasons)."""
    units = len(grid.cells)
    rule = f"retrieval heads: mean score >= {threshold}; strong: >= {strong} in some language"

    exchange_seed = np.random.SeedSequence([seed, 1])

    def statistic(rows: np.ndarray, rng: np.random.Generator | None) -> dict[str, float]:
        means = grid.mean_scores(rows, languages) if languages else {}
        out = {  # a language without a success in this draw has no share (never 0 heads)
            f"sparse|{code}": SPARSE_SHARE - float(np.mean(values >= threshold))
            if np.isfinite(values).all()
            else np.nan
            for code, values in means.items()
        }
        for condition in _translations(grid, languages):
            source = condition.split(">")[0]
            both = ~np.isnan(grid.success[source][rows]) & ~np.isnan(grid.success[condition][rows])
            if both.any():
                difference = grid.success[source][rows][both] - grid.success[condition][rows][both]
                out[f"accuracy|{condition}"] = float(difference.mean())
        if any(np.isnan(values).any() for values in means.values()) or len(means) < 2:
            return out
        observed = _sharing(means, grid.layers, threshold, strong) | _ranks(means, threshold, strong)
        # the same statistics had the languages used the same heads: each cell's samples handed to the
        # languages in a random order, at the same cells and sample counts (several orders: the point)
        exchanging = rng or np.random.default_rng(exchange_seed)
        null = _mean_of(
            [
                _sharing(exchanged, grid.layers, threshold, strong) | _ranks(exchanged, threshold, strong)
                for exchanged in (
                    grid.exchanged_means(rows, languages, exchanging)
                    for _ in range(EXCHANGES if rng is None else EXCHANGES_PER_DRAW)
                )
            ]
        )
        out |= {
            name: value for name, value in observed.items() if name in ("band", "shared_share", "distance")
        }
        out["partial"] = null.get("shared_mass", np.nan) - observed.get("shared_mass", np.nan)
        for name in (
            "layer_gap",
            "strong_minus_weak",
            *(key for key in observed if key.startswith("weak_ranks|")),
        ):
            out[name] = observed.get(name, np.nan) - null.get(name, np.nan)
        return out

    point, draws = bootstrap_units(units, statistic, replicates, seed)
    few = "fewer than 2 languages with enough successful samples"
    rows = []

    sparse = [measured(code, point, draws, f"sparse|{code}", units) for code in languages]
    rows.append(
        claim_rows(
            SPARSE, sparse, CELLS, f"5 % minus the share of heads with mean score >= {threshold}", context
        )
    )

    partial = (
        measured("exchanged minus observed", point, draws, "partial", units)
        if len(languages) >= 2
        else nothing("all", few)
    )
    rows.append(
        claim_rows(
            F1_PARTIAL,
            [partial],
            CELLS,
            "shared score mass (weighted Jaccard: sum over heads of the smallest score over the "
            "languages / the largest) with the languages' samples exchanged at random within each cell "
            "(the noise floor: same cells and counts, same heads; mean of "
            f"{EXCHANGES}, {EXCHANGES_PER_DRAW} per replicate) minus the observed; thresholded shares "
            "flip heads near the threshold with every draw, so the verdict uses the scores themselves",
            context,
        )
    )
    band = (
        measured("shared share", point, draws, "band", units) if len(languages) >= 2 else nothing("all", few)
    )
    rows.append(
        claim_rows(
            F1_BAND,
            [band],
            CELLS,
            f"distance of the shared share into [{BAND[0]}, {BAND[1]}] "
            f"(min(share - {BAND[0]}, {BAND[1]} - share); "
            f"shared share {_number(point.get('shared_share'))}); {rule}",
            context,
        )
    )
    rows.append(
        claim_rows(
            F1_LATER,
            [_or_few(measured("all", point, draws, "layer_gap", units), languages)],
            CELLS,
            "mean layer weighted by how much a head's scores differ between languages (max - min) minus "
            "weighted by its smallest score, observed minus with the languages' samples exchanged",
            context,
        )
    )
    rows.append(
        claim_rows(
            F2_STRONG,
            [_or_few(measured("all", point, draws, "strong_minus_weak", units), languages)],
            CELLS,
            f"shared share of strong heads minus of weak heads (peak score in [{threshold}, {strong})), "
            "observed minus with the languages' samples exchanged within cells",
            context,
        )
    )
    distance = (
        measured("en-de minus en-zh", point, draws, "distance", units)
        if {"en", "de", "zh"} <= set(languages)
        else nothing("en-de minus en-zh", "needs en, de and zh with enough successful samples")
    )
    rows.append(
        claim_rows(
            F3_DISTANCE,
            [distance],
            CELLS,
            "Spearman(en, de) minus Spearman(en, zh) over heads that retrieve in some language, "
            "paired in each replicate",
            context,
        )
    )
    weak = [
        measured(f"{a}-{b}", point, draws, f"weak_ranks|{a}-{b}", units)
        for a, b in combinations(languages, 2)
    ] or [nothing("all", few)]
    rows.append(
        claim_rows(
            F3_WEAK,
            weak,
            CELLS,
            "mean |rank difference| of weak minus strong heads, ranks among the pair's retrieval heads only, "
            "observed minus with the languages' samples exchanged within cells",
            context,
        )
    )
    conditions = _translations(grid, languages)
    fails = [measured(c, point, draws, f"accuracy|{c}", units) for c in conditions] or [
        nothing("translation", "no translation condition (or its source language is thin)")
    ]
    rows.append(
        claim_rows(
            F4_FAILS,
            fails,
            CELLS + "; translation paired with its monolingual cell",
            "monolingual minus translated accuracy",
            context,
        )
    )
    inactive = [_inactive(grid, condition, replicates, seed) for condition in conditions] or [
        nothing("translation", "no translation condition (or its source language is thin)")
    ]
    rows.append(
        claim_rows(
            F4_INACTIVE,
            inactive,
            "cells, split in halves: heads chosen on one, measured on the other (cross-fitted)",
            f"needle attention of the source's top-{TOP_HEADS} retrieval heads, "
            "monolingual minus translated, "
            "paired by cell; 'activity' is the attention weight on the needle's tokens",
            context,
        )
    )
    return rows


def _or_few(part: Measured, languages: list[str]) -> Measured:
    return (
        part
        if len(languages) >= 2
        else nothing(part.label, "fewer than 2 languages with enough successful samples")
    )


def _number(value: float | None) -> str:
    return "NaN" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _translations(grid: CellGrid, languages: list[str]) -> list[str]:
    return [code for code in grid.scores if ">" in code and code.split(">")[0] in languages]


def _members(means: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    return np.stack([values >= threshold for values in means.values()], axis=1)


def shared_share(means: dict[str, np.ndarray], threshold: float) -> float:
    """Retrieval heads in every condition over retrieval heads in any; NaN without any (or a NaN
    condition: no data is not a language without heads)."""
    if any(np.isnan(values).any() for values in means.values()):
        return np.nan
    member = _members(means, threshold)
    any_ = member.any(axis=1)
    return float(member.all(axis=1).sum() / any_.sum()) if any_.any() else np.nan


def _sharing(
    means: dict[str, np.ndarray], layers: np.ndarray, threshold: float, strong: float
) -> dict[str, float]:
    member = _members(means, threshold)
    shared = member.all(axis=1)
    peak = np.max(np.stack(list(means.values()), axis=1), axis=1)
    strong_heads, weak_heads = peak >= strong, (peak >= threshold) & (peak < strong)
    share = shared_share(means, threshold)
    stacked = np.stack(list(means.values()), axis=1)
    out = {
        "shared_share": share,
        "band": min(share - BAND[0], BAND[1] - share) if np.isfinite(share) else np.nan,
        "shared_mass": _shared_mass(stacked),
    }
    # score-weighted: a head weighs as much as its scores differ between languages (specific) or as
    # its smallest score (shared); a set cut by a threshold is often empty in a draw
    specific_weight, shared_weight = np.ptp(stacked, axis=1), stacked.min(axis=1)
    if specific_weight.sum() > 0 and shared_weight.sum() > 0:
        out["layer_gap"] = float(
            np.average(layers, weights=specific_weight) - np.average(layers, weights=shared_weight)
        )
    if strong_heads.any() and weak_heads.any():
        out["strong_minus_weak"] = float(shared[strong_heads].mean() - shared[weak_heads].mean())
    return out


def _shared_mass(stacked: np.ndarray) -> float:
    """Weighted Jaccard of the languages' scores (heads x languages): the retrieval score every
    language gives a head over the most any gives it, summed over heads. The thresholded shared share
    without the threshold: a head scoring 0.09 in one language and 0.11 in another counts as almost
    shared instead of flipping between shared and specific with every draw."""
    top = stacked.max(axis=1).sum()
    return float(stacked.min(axis=1).sum() / top) if top > 0 else np.nan


def _ranks(means: dict[str, np.ndarray], threshold: float, strong: float) -> dict[str, float]:
    out = {}
    if {"en", "de", "zh"} <= set(means):
        peak = np.max(np.stack(list(means.values()), axis=1), axis=1)
        chosen = peak >= threshold
        if chosen.sum() >= 3:
            near = _spearman(means["en"][chosen], means["de"][chosen])
            far = _spearman(means["en"][chosen], means["zh"][chosen])
            out["distance"] = near - far
    for a, b in combinations(means, 2):
        peak = np.maximum(means[a], means[b])
        chosen = peak >= threshold
        strong_heads = peak[chosen] >= strong
        if strong_heads.any() and (~strong_heads).any():
            difference = np.abs(stats.rankdata(-means[a][chosen]) - stats.rankdata(-means[b][chosen]))
            out[f"weak_ranks|{a}-{b}"] = float(
                difference[~strong_heads].mean() - difference[strong_heads].mean()
            )
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan
    return float(stats.spearmanr(a, b).statistic)


def _mean_of(statistics: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic's mean over ``statistics`` where it was defined (NaN where it never was)."""
    names = set().union(*statistics) if statistics else set()
    means = {}
    for name in names:
        values = np.array([values.get(name, np.nan) for values in statistics], dtype=float)
        means[name] = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else np.nan
    return means


def _inactive(grid: CellGrid, condition: str, replicates: int, seed: int) -> Measured:
    source = condition.split(">")[0]
    paired = np.flatnonzero(~np.isnan(grid.success[source]) & ~np.isnan(grid.success[condition]))

    def measure(chosen_on: np.ndarray, measured_on: np.ndarray) -> float:
        means = grid.mean_scores(paired[chosen_on], [source])[source]
        if np.isnan(means).all():
            return np.nan
        order = np.argsort(-means, kind="stable")[:TOP_HEADS]
        top = order[means[order] > 0]
        if not len(top):
            return np.nan
        rows = paired[measured_on]
        drop = grid.attention[source][rows][:, top] - grid.attention[condition][rows][:, top]
        return float(np.nanmean(drop))

    def statistic(groups: list[np.ndarray]) -> float:
        first, second = groups
        return float(np.mean([measure(first, second), measure(second, first)]))

    estimate, draws = split_units(len(paired), 2, statistic, replicates, seed)
    return Measured(condition, estimate, draws, len(paired), "" if len(paired) else "no cell ran in both")
