"""The masking claims of an ablate run: Wu et al.'s top-K against random heads (NIAH and chain of
thought) and Finding 5 of the multilingual study (agnostic against each language's own specific heads).

Contrasts are paired by prompt (a word problem: by problem and language, its two modes paired); the
random head sets are resampled with the prompts (two levels), so their spread is in the interval.
Heads were chosen on the detection run, whose samples the ablation does not reuse (the manifest's
``overlap_with_detection`` says what the two share).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.claims import (
    MULTILINGUAL,
    WU,
    Context,
    Measured,
    against_random,
    claim_rows,
    nested_difference,
    nothing,
    register_claim,
)

MASK_TOP = register_claim(
    "wu.mask_top_vs_random",
    WU,
    "Masking the top-K retrieval heads lowers needle-in-a-haystack accuracy more than masking "
    "K random heads.",
    figure="Accuracy when heads are masked",
)
MASK_TOP_EACH = register_claim(
    "wu.mask_top_vs_random_each",
    WU,
    "In every language, masking the top-K retrieval heads lowers accuracy more than K random heads.",
    figure="Accuracy when heads are masked",
)
COT_TOP = register_claim(
    "wu.cot_top_vs_random",
    WU,
    "Under chain of thought, masking the top-K retrieval heads lowers accuracy more than K random heads.",
    figure="Accuracy when heads are masked",
)
COT_VS_DIRECT = register_claim(
    "wu.cot_vs_direct",
    WU,
    "Masking retrieval heads (against random heads) hurts chain-of-thought answers more than direct answers.",
    figure="Accuracy when heads are masked",
)
F5 = register_claim(
    "multilingual.f5_agnostic_hurts_more",
    MULTILINGUAL,
    "Masking the top language-agnostic heads lowers ROUGE more than masking as many language-specific "
    "heads, in every language.",
    figure="Accuracy when heads are masked",
)
F5_MATCHED = register_claim(
    "multilingual.f5_matched",
    MULTILINGUAL,
    "At matched strength, masking agnostic heads lowers ROUGE more than masking specific heads, in every "
    "language.",
    figure="Accuracy when heads are masked",
)
PROMPTS = (
    "prompts (paired across head sets; pooled: grid cells, each language's prompt of a cell averaged); "
    "against random heads: the top set compared with the spread of the random sets (a t prediction "
    "interval for one more random set, k - 1 df)"
)


def ablation_claims(
    samples: pd.DataFrame, sets: pd.DataFrame, task: str, replicates: int, seed: int, context: Context
) -> list[tuple[dict, list[dict]]]:
    """The claims an ablate run tests. samples : its finished evaluations (mask_id, sample_id,
    language, success, rouge1_recall; word problems: mode, problem_id); sets : its head_sets table."""
    if task == "cot":
        return _cot_claims(samples, sets, replicates, seed, context)
    rows = []
    k = _largest_k(sets, ("top", "random"))
    languages = sorted(samples["language"].unique())
    test = f"accuracy with K={k} random heads masked (mean over draws) minus with the top-K masked"
    if k is None:
        missing = nothing("all", "no K with both top and random head sets")
        rows.append(claim_rows(MASK_TOP, [missing], PROMPTS, "accuracy: random minus top", context))
        rows.append(claim_rows(MASK_TOP_EACH, [missing], PROMPTS, "accuracy: random minus top", context))
    else:
        pooled = _top_vs_random(samples, sets, k, "success", "all", replicates, seed)
        rows.append(claim_rows(MASK_TOP, [pooled], PROMPTS + "; languages pooled", test, context))
        each = [
            _top_vs_random(samples[samples["language"] == code], sets, k, "success", code, replicates, seed)
            for code in languages
        ]
        rows.append(claim_rows(MASK_TOP_EACH, each, PROMPTS, test, context))
    rows.append(
        _finding_5(samples, sets, languages, "specific", "agnostic-equal", F5, replicates, seed, context)
    )
    rows.append(
        _finding_5(
            samples,
            sets,
            languages,
            "specific-matched",
            "agnostic-matched",
            F5_MATCHED,
            replicates,
            seed,
            context,
        )
    )
    return rows


def _largest_k(sets: pd.DataFrame, names: tuple[str, ...]) -> int | None:
    present = [set(sets.loc[(sets["name"] == name) & (sets["count"] > 0), "k"]) for name in names]
    common = set.intersection(*present) if present else set()
    return max(common) if common else None


CELL = ("length", "depth", "needle_id")


def _wide(samples: pd.DataFrame, mask_ids: list[str], metric: str) -> pd.DataFrame:
    """units x masks of ``metric``, units that ran under every mask. A unit is a cell of the NIAH grid
    (length, depth, needle), the same in every language: languages pooled are averaged within their
    cell, never counted as independent prompts (the grid is parallel). Other tasks: a prompt."""
    chosen = samples[samples["mask_id"].isin(mask_ids)]
    if set(CELL) <= set(chosen.columns):
        unit = chosen["length"].astype(str) + "|" + chosen["depth"].astype(str) + "|" + chosen["needle_id"]
    else:
        unit = chosen["sample_id"]
    wide = chosen.assign(unit=unit).pivot_table(
        index="unit", columns="mask_id", values=metric, aggfunc="mean"
    )
    return wide.reindex(columns=mask_ids).dropna()


def _top_vs_random(
    samples: pd.DataFrame, sets: pd.DataFrame, k: int, metric: str, label: str, replicates: int, seed: int
) -> Measured:
    top = sets.loc[(sets["name"] == "top") & (sets["k"] == k), "mask_id"].iloc[0]
    random = list(sets.loc[(sets["name"] == "random") & (sets["k"] == k), "mask_id"])
    baseline = samples.loc[samples["mask_id"] == "baseline", metric]
    if baseline.empty or baseline.mean() == 0:
        return nothing(label, "baseline accuracy 0: nothing to lower")
    return _random_minus_top(label, _wide(samples, [top, *random], metric), top, random, replicates, seed)


def _random_minus_top(
    label: str, wide: pd.DataFrame, top: str, random: list[str], replicates: int, seed: int
) -> Measured:
    """Accuracy with the random sets masked minus with the top set (the paper's side positive), the
    top set against the random sets' spread."""
    return against_random(label, -wide[top].to_numpy(float), -wide[random].to_numpy(float), replicates, seed)


def _finding_5(
    samples: pd.DataFrame,
    sets: pd.DataFrame,
    languages: list[str],
    specific: str,
    agnostic: str,
    claim,
    replicates: int,
    seed: int,
    context: Context,
) -> tuple[dict, list[dict]]:
    test = (
        f"ROUGE-1 recall with the language's '{specific}' heads masked minus with as many '{agnostic}' "
        "heads, at the largest K where the counts are equal"
    )
    if "rouge1_recall" not in samples or samples["rouge1_recall"].isna().all():
        return claim_rows(claim, [nothing("all", "the task has no ROUGE")], PROMPTS, test, context)
    parts = []
    for code in languages:
        own = sets[(sets["name"] == specific) & (sets["language"].isin([code]))]
        shared = sets[(sets["name"] == agnostic) & (sets["language"] == code)]
        common = sorted(set(own["k"]) & set(shared["k"]))
        # as many heads on both sides: a contrast of 1 specific head against 4 agnostic ones measures
        # the count, not the kind
        usable = [k for k in common if _count(own, k) > 0 and _count(own, k) == _count(shared, k)]
        if not usable:
            if own.empty:
                reason = f"no '{specific}' head set (ablate --head-sets)"
            elif own["count"].sum() == 0:
                reason = "no specific heads of this language" if specific == "specific" else "no matched pair"
            else:
                counts = ", ".join(f"K={k}: {_count(own, k)} vs {_count(shared, k)}" for k in common)
                reason = f"never as many {specific} as {agnostic} heads ({counts})"
            parts.append(nothing(code, reason))
            continue
        k = max(usable)
        masks = [_mask(own, k), _mask(shared, k)]
        wide = _wide(samples[samples["language"] == code], masks, "rouge1_recall")
        label = f"{code} (K={k}: {_count(own, k)} {specific}, {_count(shared, k)} {agnostic})"
        parts.append(
            nested_difference(
                label, wide[[masks[0]]].to_numpy(float), wide[[masks[1]]].to_numpy(float), replicates, seed
            )
        )
    return claim_rows(claim, parts, PROMPTS, test, context)


def _count(sets: pd.DataFrame, k: int) -> int:
    return int(sets.loc[sets["k"] == k, "count"].iloc[0])


def _mask(sets: pd.DataFrame, k: int) -> str:
    return str(sets.loc[sets["k"] == k, "mask_id"].iloc[0])


def _cot_claims(
    samples: pd.DataFrame, sets: pd.DataFrame, replicates: int, seed: int, context: Context
) -> list[tuple[dict, list[dict]]]:
    k = _largest_k(sets, ("top", "random"))
    unit = "word problems x language (both modes of a problem paired); random head sets resampled with them"
    if k is None:
        missing = nothing("all", "no K with both top and random head sets")
        return [
            claim_rows(COT_TOP, [missing], unit, "accuracy: random minus top", context),
            claim_rows(COT_VS_DIRECT, [missing], unit, "accuracy: random minus top", context),
        ]
    top = sets.loc[(sets["name"] == "top") & (sets["k"] == k), "mask_id"].iloc[0]
    random = list(sets.loc[(sets["name"] == "random") & (sets["k"] == k), "mask_id"])
    # a problem is asked in both modes ('en/cot', 'en/direct'): paired by its language and id
    frame = samples.assign(problem=samples["source_language"] + "/" + samples["problem_id"].astype(str))
    by_mode = {}
    for mode in ("cot", "direct"):
        chosen = frame[frame["mode"] == mode]
        wide = chosen.pivot_table(index="problem", columns="mask_id", values="success", aggfunc="mean")
        by_mode[mode] = wide.reindex(columns=["baseline", top, *random])
    cot_base = by_mode["cot"]["baseline"].mean()
    test_top = f"CoT accuracy with K={k} random heads masked (mean over draws) minus with the top-K masked"
    if not np.isfinite(cot_base) or cot_base == 0:
        reason = "baseline CoT accuracy 0: nothing to lower"
        return [
            claim_rows(COT_TOP, [nothing("all", reason)], unit, test_top, context),
            claim_rows(COT_VS_DIRECT, [nothing("all", reason)], unit, "difference of differences", context),
        ]
    cot = by_mode["cot"].dropna()
    rows = [
        claim_rows(
            COT_TOP,
            [_random_minus_top("cot", cot, top, random, replicates, seed)],
            unit,
            test_top,
            context,
        )
    ]
    both = (
        by_mode["cot"].add_suffix(":cot").join(by_mode["direct"].add_suffix(":direct"), how="inner").dropna()
    )
    random_gap = both[[f"{m}:cot" for m in random]].to_numpy(float) - both[
        [f"{m}:direct" for m in random]
    ].to_numpy(float)
    top_gap = both[f"{top}:cot"].to_numpy(float) - both[f"{top}:direct"].to_numpy(float)
    rows.append(
        claim_rows(
            COT_VS_DIRECT,
            [against_random("cot minus direct", -top_gap, -random_gap, replicates, seed)],
            unit,
            f"(random minus top-K accuracy, K={k}) under CoT minus the same under direct answers, "
            "paired by problem",
            context,
        )
    )
    return rows
