"""The claims of LAHIS (language attention head importance) tested by language-test and adapt runs.

Every contrast is signed so that positive is the paper's side and is paired by unit (a held-out text,
a prompt, a question). Against random heads the chosen set is compared with the spread of the
random sets (:func:`babelheads.analysis.claims.against_random`).

A language-test run writes the row of the claim its mode tests; adapt runs write ``lahis.adapt_gain``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.claims import (
    Context,
    Measured,
    against_random,
    bootstrap_units,
    claim_rows,
    nothing,
    register_claim,
)

LAHIS = "LAHIS: language attention head importance (arXiv 2511.07498), language-specific and general heads"

PPL_SPECIFIC = register_claim(
    "lahis.ppl_specific",
    LAHIS,
    "Masking a language's specific heads raises its perplexity more than masking as many random heads, "
    "in every language.",
    figure="Perplexity when a language's own specific heads are masked",
)
PPL_CROSS = register_claim(
    "lahis.ppl_cross_diagonal",
    LAHIS,
    "The test-language x masked-heads perplexity matrix is diagonal: a language's own specific heads "
    "raise its perplexity more than other languages' heads do, in every language.",
    figure="Perplexity when one language's specific heads are masked (ppl-cross)",
)
GENERAL_ALL = register_claim(
    "lahis.general_all",
    LAHIS,
    "Masking the language-general heads hurts every language more than masking as many random heads.",
    figure="Masking the language-general heads",
)
OFF_TARGET = register_claim(
    "lahis.off_target",
    LAHIS,
    "Masking the specific heads of a dominant language (English) raises the share of output in the "
    "requested language more than masking as many random heads.",
    figure="Off-target output when English-specific heads are masked",
)
ATTN_TRANSFER = register_claim(
    "lahis.attn_transfer",
    LAHIS,
    "Amplifying language-1 heads shifts answers toward the language-1 statement more than amplifying "
    "as many random heads alike.",
    figure="Attention transfer between two conflicting statements",
)
ADAPT_GAIN = register_claim(
    "lahis.adapt_gain",
    LAHIS,
    "A soft mask trained on the language's heads improves held-out QA more than the same training on "
    "as many random heads.",
    figure="Soft head-mask adaptation on held-out QA",
)

LANGUAGE_TEST_CLAIMS = {
    "ppl": PPL_SPECIFIC,
    "ppl-cross": PPL_CROSS,
    "general": GENERAL_ALL,
    "off-target": OFF_TARGET,
    "attn-transfer": ATTN_TRANSFER,
}
"""The language-test mode that measures each claim."""

CONTROL_NOTE = (
    "; NEGATIVE CONTROL: the language heads are replaced by random heads of the same counts "
    "(no claim may hold)"
)


def paired_mean(label: str, first: np.ndarray, second: np.ndarray, replicates: int, seed: int) -> Measured:
    """mean over units of first - (row mean of second); the columns of ``second`` are fixed conditions
    (other languages' masks), never resampled. first : (units,); second : (units, m)."""
    if len(first) == 0:
        return nothing(label, "no unit ran under every condition")

    def statistic(rows: np.ndarray, rng: np.random.Generator | None) -> dict[str, float]:
        return {"value": float(np.mean(first[rows] - second[rows].mean(axis=1)))}

    point, draws = bootstrap_units(len(first), statistic, replicates, seed)
    return Measured(label, point["value"], draws["value"], len(first))


def _wide(frame: pd.DataFrame, value: str, conditions: list[str]) -> pd.DataFrame:
    """units x conditions of ``value``, the units that ran under every one of ``conditions``."""
    chosen = frame[frame["condition"].isin(conditions)]
    wide = chosen.pivot_table(index="unit", columns="condition", values=value, aggfunc="mean")
    if not set(conditions) <= set(wide.columns):
        return pd.DataFrame(columns=conditions)
    return wide[conditions].dropna()


def _randoms(frame: pd.DataFrame, prefix: str) -> list[str]:
    return sorted(c for c in frame["condition"].unique() if str(c).startswith(prefix))


def chosen_against_random(
    frame: pd.DataFrame,
    value: str,
    chosen: str,
    random_prefix: str,
    label: str,
    replicates: int,
    seed: int,
    sign: float = 1.0,
) -> Measured:
    """``sign`` x (value under ``chosen`` - under the random sets named ``random_prefix``*), paired by
    unit (sign -1: a drop of a score is the paper's side)."""
    if chosen not in set(frame["condition"]):
        return nothing(label, f"no '{chosen}' heads here")
    random = _randoms(frame, random_prefix)
    if not random:
        return nothing(label, "no random head set ran")
    wide = _wide(frame, value, [chosen, *random])
    return against_random(
        label,
        sign * wide[chosen].to_numpy(float),
        sign * wide[random].to_numpy(float),
        replicates,
        seed,
    )


def ppl_specific(texts: pd.DataFrame, replicates: int, seed: int) -> list[Measured]:
    """Per language: log-ppl with its own specific heads zeroed minus with random heads zeroed."""
    return [
        chosen_against_random(
            group, "log_ppl", f"specific:{code}", f"random-specific:{code}:", code, replicates, seed
        )
        for code, group in texts.groupby("language", sort=True)
    ]


def ppl_cross(texts: pd.DataFrame, replicates: int, seed: int, prefix: str = "exclusive:") -> list[Measured]:
    """Per test language: the log-ppl rise with its own (exclusive) specific heads zeroed minus the
    mean rise with each other language's; the rises share the no-mask baseline, so it cancels."""
    parts = []
    for code, group in texts.groupby("language", sort=True):
        masks = sorted(c for c in group["condition"].unique() if str(c).startswith(prefix))
        own = f"{prefix}{code}"
        others = [mask for mask in masks if mask != own]
        if own not in masks:
            parts.append(nothing(code, "no exclusive specific heads of this language (all are shared)"))
            continue
        if not others:
            parts.append(nothing(code, "no other language has exclusive specific heads"))
            continue
        wide = _wide(group, "log_ppl", [own, *others])
        parts.append(
            paired_mean(code, wide[own].to_numpy(float), wide[others].to_numpy(float), replicates, seed)
        )
    return parts


def _baseline(frame: pd.DataFrame, value: str) -> float:
    values = frame.loc[frame["condition"] == "none", value]
    return float(values.mean()) if len(values) else np.nan


def general_all(
    measures: dict[str, tuple[pd.DataFrame, str, float]], replicates: int, seed: int
) -> list[Measured]:
    """Per language and measure: the harm with the general heads zeroed minus with as many random
    heads. measures : label -> (rows, value column, sign): +1 where a rise is harm (log-ppl), -1 where
    a drop is (accuracy, BERTScore)."""
    parts = []
    for name, (frame, value, sign) in measures.items():
        for code, group in frame.groupby("language", sort=True):
            label = f"{code} ({name})"
            if value == "correct" and _baseline(group, value) == 0:
                parts.append(nothing(label, "baseline accuracy 0: nothing to lower"))
                continue
            parts.append(
                chosen_against_random(
                    group, value, "general", "random-general:", label, replicates, seed, sign
                )
            )
    return parts


def off_target(shares: pd.DataFrame, replicates: int, seed: int) -> list[Measured]:
    """On-target share with English-specific heads zeroed minus with random heads, prompts of every
    asked language pooled (the paper reports it per language where it rises)."""
    label = ", ".join(sorted(shares["language"].unique())) + " pooled"
    if _baseline(shares, "on_target") == 1:
        return [nothing(label, "on-target share already 1 without a mask: nothing to raise")]
    return [
        chosen_against_random(
            shares, "on_target", "specific:en", "random-specific:en:", label, replicates, seed
        )
    ]


def attn_transfer(follows: pd.DataFrame, replicates: int, seed: int) -> list[Measured]:
    """Share of answers that follow statement 1 with language-1 heads amplified minus with random
    heads amplified alike; every ordered language pair pooled (conditions named by role)."""
    return [
        chosen_against_random(
            follows, "follows_first", "amplify", "random-amplify:", "all pairs", replicates, seed
        )
    ]


def adapt_gain(answers: pd.DataFrame, language: str, replicates: int, seed: int) -> list[Measured]:
    """Held-out accuracy of the mask trained on the language's heads minus of masks trained on random
    heads (conditions 'adapted' and 'random-adapted:<seed>'), paired by question."""
    return [
        chosen_against_random(answers, "correct", "adapted", "random-adapted:", language, replicates, seed)
    ]


def language_test_claims(
    experiment: str,
    measured: list[Measured],
    test: str,
    unit: str,
    context: Context,
    control: bool = False,
) -> list[tuple[dict, list[dict]]]:
    """The row of the claim ``experiment`` measures (its ``measured`` parts, ``test``, ``unit``); a
    mode that tests no claim (retrieval) gives none."""
    claim = LANGUAGE_TEST_CLAIMS.get(experiment)
    if claim is None:
        return []
    return [claim_rows(claim, measured, unit, test + (CONTROL_NOTE if control else ""), context)]


def random_sets(frame: pd.DataFrame, prefix: str) -> int:
    """How many random head sets named ``prefix``* ran."""
    return len(_randoms(frame, prefix)) if len(frame) else 0


def against_random_unit(units: str, sets: int) -> str:
    """A row's ``unit`` for a contrast against ``sets`` random head sets."""
    return (
        f"{units}, paired across head sets; the chosen set against the spread of {sets} random sets "
        f"(t prediction interval, {max(sets - 1, 0)} df), units resampled"
    )
