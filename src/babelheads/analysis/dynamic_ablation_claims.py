"""The claims of "Retrieval Heads are Dynamic" that a dynamic-ablate run tests: masking a step's dynamic
heads hurts more than as many static heads, and more than as many random heads; progressive masking
collapses retrieval; the heads that compensate are mostly not static top-K heads.

The design masks one step at a time, teacher-forced on the clean continuation, so the measure of
retrieval is per step: whether a retrieval step's token (a step with at least one dynamic head)
survives the mask. A sample's retrieval steps are averaged within it and the samples are resampled (a
sample's steps together); random head draws are resampled with them (two levels). Only samples whose
clean answer is right take part, as in the run's summary: a mask cannot break what was already wrong.
The static heads were ranked on the heads run, whose haystacks the ablation does not reuse. Parts: one
per language, so "holds" means in every language (intersection-union).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.claims import (
    DYNAMIC,
    Context,
    Measured,
    bootstrap_units,
    claim_rows,
    nested_difference,
    nothing,
    register_claim,
)

COLLAPSE = 0.5
"""Progressive masking "collapses" retrieval when its last stage keeps under this share of the unmasked
retrieval: merely "below the unmasked baseline" also holds when as many random heads are masked on a
model with few heads, so it could not tell the paper's collapse (1.0 to 0.0) from any damage."""
MOSTLY = 0.5
"""Compensating heads are "mostly" outside the static top-K when more than this share of them is."""
FIGURE = "Dynamic ablation"
VS_STATIC = register_claim(
    "dynamic.ablation_vs_static",
    DYNAMIC,
    "Masking a step's dynamic retrieval heads hurts retrieval more than masking as many static top heads.",
    figure=FIGURE,
)
VS_RANDOM = register_claim(
    "dynamic.ablation_vs_random",
    DYNAMIC,
    "Masking a step's dynamic retrieval heads hurts retrieval more than masking as many random heads.",
    figure=FIGURE,
)
COLLAPSES = register_claim(
    "dynamic.progressive_collapse",
    DYNAMIC,
    f"Progressive masking of each step's highest-ranked heads collapses retrieval: the last stage keeps "
    f"under {COLLAPSE:.0%} of the unmasked retrieval (accuracy 1.0 to 0.0 by k = 20 in the paper).",
    figure=FIGURE,
)
COMPENSATION = register_claim(
    "dynamic.compensation",
    DYNAMIC,
    "The heads that take over when a step's heads are masked are mostly not static top-K heads "
    "(4.5-7 of the static top 20 in the paper).",
    figure=FIGURE,
)
UNIT = (
    "samples answered right without masks (a sample's retrieval steps together; random draws resampled "
    "with them)"
)
PROTOCOL = (
    "one step masked at a time ({method} masks), teacher-forced on the clean continuation; retrieval = "
    "share of a sample's retrieval steps (steps with a dynamic head, S = 1) whose token survives"
)
CONTROL = (
    "NEGATIVE CONTROL (dynamic-ablate --control): random heads masked in place of each step's dynamic "
    "heads and of the progressive ranking, same counts; "
)


def dynamic_ablation_claims(
    samples: pd.DataFrame,
    steps: pd.DataFrame,
    replicates: int,
    seed: int,
    context: Context,
    *,
    control: bool = False,
    method: str = "gate",
    static_k: int | None = None,
) -> list[tuple[dict, list[dict]]]:
    """The claims a dynamic-ablate run tests. samples : its finished answers (sample_id, language,
    condition, exact); steps : its per-step rows (sample_id, language, condition, k, seed,
    dynamic_heads, kept; compensating, compensating_static where recorded). control : the run masked
    random heads in place of the dynamic heads (its verdicts must not hold). static_k : the K of the
    static top-K the compensating heads were counted against (named in the test; None: unknown)."""
    right = set(samples.loc[(samples["condition"] == "clean") & samples["exact"].astype(bool), "sample_id"])
    # A step without a dynamic head masked nothing under dynamic, static and random: not a retrieval step.
    retrieval = steps[(steps["dynamic_heads"] > 0) & steps["sample_id"].isin(right)].assign(
        kept=lambda frame: frame["kept"].astype(float)
    )
    languages = sorted(set(samples["language"]) | set(steps["language"]))
    parts: dict[str, list[Measured]] = {"static": [], "random": [], "collapse": [], "compensation": []}
    for language in languages:
        answered = samples[(samples["language"] == language) & samples["sample_id"].isin(right)]
        rows = retrieval[retrieval["language"] == language]
        if answered.empty or rows.empty:
            reason = (
                "no sample answered right without masks"
                if answered.empty
                else "no retrieval step (no head copied the needle) in the samples answered right"
            )
            for name in parts:
                parts[name].append(nothing(language, reason))
            continue
        dynamic = _kept(rows, "dynamic")
        parts["static"].append(_paired(language, _kept(rows, "static"), dynamic, replicates, seed))
        parts["random"].append(_paired(language, _kept(rows, "random"), dynamic, replicates, seed))
        parts["collapse"].append(_collapse(language, rows, replicates, seed))
        parts["compensation"].append(
            nothing(
                language,
                "negative control: the masked heads are random, so no head compensates for the step's "
                "own heads (the claim has no control)",
            )
            if control
            else _compensation(language, rows, replicates, seed)
        )
    missing = [nothing("all", "no sample ran")]
    protocol = PROTOCOL.format(method=method)
    prefix = CONTROL if control else ""  # a control's row says so first
    k_static = f"K = {static_k}" if static_k else "K of the run"
    return [
        claim_rows(
            VS_STATIC,
            parts["static"] or missing,
            UNIT,
            prefix + "retrieval with the step's |D_t| highest static heads (the heads run's ranking) "
            f"masked minus with its dynamic heads D_t masked; {protocol}. The paper matches the static "
            "heads to the average |D_t| and scores answer accuracy; here the count is matched per step "
            "(the answers' exact match is in the dynamic_ablation table)",
            context,
        ),
        claim_rows(
            VS_RANDOM,
            parts["random"] or missing,
            UNIT,
            prefix + "retrieval with |D_t| uniformly random heads masked (mean over draws) minus with the "
            f"step's dynamic heads D_t masked; {protocol}. The paper matches the random heads to the "
            "average |D_t| and scores answer accuracy; here the count is matched per step",
            context,
        ),
        claim_rows(
            COLLAPSES,
            parts["collapse"] or missing,
            UNIT,
            prefix + f"{COLLAPSE:g} x retrieval without masks minus retrieval with the k highest-ranked "
            "heads of each step masked, at the run's largest k (ranked by graded S, then attention on "
            f"the needle); {protocol}. The paper masks k dynamic heads in steps of 5 up to 20 and reads "
            "answer accuracy falling from 1.0 to 0.0; here the run's k values, and a fall below half "
            "the unmasked retrieval stands for the collapse",
            context,
        ),
        claim_rows(
            COMPENSATION,
            parts["compensation"] or missing,
            UNIT,
            prefix + f"share of compensating heads outside the language's static top-K ({k_static}) "
            f"minus {MOSTLY:g}, pooled over every progressive stage's retrieval steps (a head counted at "
            "each step and stage it compensates); a compensating head copies the clean token from the "
            "needle under the mask and is neither masked nor one of the step's own dynamic heads; "
            f"{protocol}. The paper counts the compensating heads in the static top 20 (4.5-7)",
            context,
        ),
    ]


def _kept(rows: pd.DataFrame, condition: str, k: int | None = None) -> pd.DataFrame:
    """samples x draws: the share of each sample's retrieval steps whose token survived ``condition``
    (one column per random draw; one column otherwise)."""
    chosen = rows[rows["condition"] == condition]
    if k is not None:
        chosen = chosen[chosen["k"] == k]
    if chosen.empty:
        return pd.DataFrame()
    return chosen.pivot_table(index="sample_id", columns="seed", values="kept", aggfunc="mean")


def _paired(label: str, first: pd.DataFrame, second: pd.DataFrame, replicates: int, seed: int) -> Measured:
    """mean over samples of (first - second), each side averaged over its draws; samples under both."""
    if first.empty or second.empty:
        return nothing(label, "the run has no such condition")
    samples = first.dropna().index.intersection(second.dropna().index)
    return nested_difference(
        label,
        first.loc[samples].to_numpy(float),
        second.loc[samples].to_numpy(float),
        replicates,
        seed,
    )


def _collapse(label: str, rows: pd.DataFrame, replicates: int, seed: int) -> Measured:
    """COLLAPSE x clean retrieval minus retrieval at the largest progressive k, paired by sample."""
    stages = rows.loc[rows["condition"] == "progressive", "k"]
    if stages.empty:
        return nothing(label, "no progressive masking")
    last = int(stages.max())
    # COLLAPSE x clean - last: scale the clean side so the contrast is one paired difference
    clean = _kept(rows, "clean") * COLLAPSE
    return _paired(f"{label}, k={last}", clean, _kept(rows, "progressive", last), replicates, seed)


def _compensation(label: str, rows: pd.DataFrame, replicates: int, seed: int) -> Measured:
    """1 - (compensating heads in the static top-K / compensating heads) - MOSTLY, over the progressive
    stages; the ratio of sums over the drawn samples (undefined in a draw without a compensating head,
    and counted as such)."""
    if not {"compensating", "compensating_static"} <= set(rows.columns):
        return nothing(label, "the run records no compensating heads")
    progressive = rows[rows["condition"] == "progressive"]
    if progressive.empty:
        return nothing(label, "no progressive masking")
    sums = progressive.groupby("sample_id")[["compensating", "compensating_static"]].sum()
    total = sums["compensating"].to_numpy(float)
    static = sums["compensating_static"].to_numpy(float)
    if total.sum() == 0:
        return nothing(label, "no head compensated at any progressive stage")

    def statistic(units: np.ndarray, _rng: np.random.Generator | None) -> dict[str, float]:
        heads = total[units].sum()
        return {"value": float(1 - static[units].sum() / heads - MOSTLY) if heads else np.nan}

    point, draws = bootstrap_units(len(sums), statistic, replicates, seed)
    return Measured(label, point["value"], draws["value"], len(sums))
