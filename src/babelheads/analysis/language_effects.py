"""Effects of masking language heads, from a language-test run's samples table: perplexity changes,
the cross-language matrix and how diagonal it is, accuracy and share differences, each paired per
text or prompt against no mask and against random heads of the same count, with bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.stats import (
    COLUMNS,
    MIN_UNITS,
    Interval,
    bootstrap_statistics,
    columns,
    nested_contrast,
)
from babelheads.analysis.stats import row as interval_row

RANDOM_PREFIX = "random"
UNDEFINED_SHARE = 0.05
CROSS_PREFIXES = ("exclusive:", "specific:")
"""Conditions of a cross matrix: ppl-cross masks each language's exclusive specific heads (runs made
before it masked all of them, 'specific:')."""


def _cross_masks(conditions) -> list[str]:
    return sorted(str(c) for c in conditions if str(c).startswith(CROSS_PREFIXES))


def _masked_kind(conditions) -> str:
    """'exclusive' or 'specific': which heads a cross matrix's masks hold."""
    masks = _cross_masks(conditions)
    return masks[0].split(":", 1)[0] if masks else ""


def _contrast(
    frame: pd.DataFrame, value: str, first: list[str], second: list[str], replicates: int, seed: int
) -> Interval:
    """mean over units of value(first) - value(second) (``second`` empty: of value(first)), each side
    averaged over its conditions (the seeds of a random set), on units that have all of them; the
    bootstrap also resamples a side's several random head sets (:func:`stats.nested_contrast`). Under
    MIN_UNITS units the interval is NaN."""
    wide = frame[frame["condition"].isin(first + second)].pivot_table(
        index="unit", columns="condition", values=value, aggfunc="mean"
    )
    if not set(first + second) <= set(wide.columns):
        return Interval(np.nan, np.nan, np.nan, 0)
    wide = wide.dropna()
    return nested_contrast(
        wide[first].to_numpy(dtype=float), wide[second].to_numpy(dtype=float), replicates, seed
    )


def paired(
    frame: pd.DataFrame, value: str, first: list[str], second: list[str], replicates: int, seed: int
) -> Interval:
    """mean over units of value(first) - value(second), units present in both, with its interval."""
    return _contrast(frame, value, first, second, replicates, seed)


def level(frame: pd.DataFrame, value: str, conditions: list[str], replicates: int, seed: int) -> Interval:
    """mean over units of value(conditions), with its interval."""
    return _contrast(frame, value, conditions, [], replicates, seed)


NO_INTERVAL = Interval(np.nan, np.nan, np.nan, 0)


def _random(frame: pd.DataFrame, name: str) -> list[str]:
    return sorted(c for c in frame["condition"].unique() if c.startswith(f"{RANDOM_PREFIX}-{name}:"))


def contrasts(
    frame: pd.DataFrame, value: str, masked: dict[str, str], replicates: int, seed: int
) -> pd.DataFrame:
    """Per language: ``value`` under no mask, under each masked condition (``masked`` maps a label to a
    condition) and its random counterparts ('random-<label>:...', every seed); differences against both.
    ``measure`` names the value measured (log_ppl, correct, ...); n counts the units (texts, prompts)."""
    rows = []
    for language, group in frame.groupby("language", sort=True):
        none = level(group, value, ["none"], replicates, seed)
        for label, condition in masked.items():
            condition = condition.format(language=language)
            random = _random(group, label)
            row = {"language": language, "heads": label, "measure": value, "none": none.value}
            if condition not in set(group["condition"]):  # no such heads here: NaN, never a zero effect
                rows.append({**row, "n": int(group["unit"].nunique())})
                continue
            for name, conditions in (("masked", [condition]), ("random", random)):
                measured = level(group, value, conditions, replicates, seed) if conditions else NO_INTERVAL
                row.update(columns(name, measured))
            for name, (first, second) in {
                "masked_minus_none": ([condition], ["none"]),
                "random_minus_none": (random, ["none"]),
                "masked_minus_random": ([condition], random),
            }.items():
                both = first and second
                effect = paired(group, value, first, second, replicates, seed) if both else NO_INTERVAL
                row.update(columns(name, effect))
            row["n"] = int(group["unit"].nunique())
            rows.append(row)
    return pd.DataFrame(rows)


def cross_matrix(frame: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Test language x masked-head language: the rise of mean log-perplexity (nats per token) over no
    mask, paired per text: value, lo, hi over n texts; ``masked`` says which heads of the language
    were masked (its exclusive specific heads, or in older runs all its specific heads)."""
    rows = []
    for language, group in frame.groupby("language", sort=True):
        for condition in _cross_masks(group["condition"].unique()):
            effect = paired(group, "log_ppl", [condition], ["none"], replicates, seed)
            kind, heads_of = condition.split(":", 1)
            rows.append(
                {"test_language": language, "heads_of": heads_of, "masked": kind, **interval_row(effect)}
            )
    return pd.DataFrame(rows, columns=["test_language", "heads_of", "masked", *COLUMNS])


def diagonality(frame: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """How diagonal the cross matrix is: per test language and overall, the diagonal's rise minus the
    mean off-diagonal rise, and their ratio, from one bootstrap that resamples each language's texts.
    A ratio is NaN when the off-diagonal rise is not positive (a ratio of a noise-sized denominator).
    ``masked`` names the heads masked (exclusive specific heads: no head on both sides); n counts the
    texts resampled (every language's, for 'all')."""
    deltas: dict[str, pd.DataFrame] = {}
    for language, group in frame.groupby("language", sort=True):
        wide = group.pivot_table(index="unit", columns="condition", values="log_ppl")
        masked = _cross_masks(wide.columns)
        deltas[language] = wide[masked].sub(wide["none"], axis=0).rename(columns=lambda c: c.split(":", 1)[1])
    # a row needs its own column and another one (a language without exclusive heads has neither)
    languages = [code for code in deltas if code in deltas[code].columns and len(deltas[code].columns) > 1]

    def statistic(draw: dict[str, pd.DataFrame]) -> dict[str, float]:
        out = {}
        diagonal, off = [], []
        for code in languages:
            means = draw[code].mean()
            others = means.drop(code)
            diagonal.append(means[code])
            off.append(others.mean())
            out[f"{code}:difference"] = means[code] - others.mean()
            out[f"{code}:ratio"] = means[code] / others.mean() if others.mean() > 0 else np.nan
        out["all:difference"] = float(np.mean(diagonal) - np.mean(off))
        out["all:ratio"] = float(np.mean(diagonal) / np.mean(off)) if np.mean(off) > 0 else np.nan
        return out

    def resample(data: dict[str, pd.DataFrame], rng: np.random.Generator) -> dict[str, pd.DataFrame]:
        return {code: texts.iloc[rng.integers(0, len(texts), len(texts))] for code, texts in data.items()}

    if not languages:
        return pd.DataFrame(columns=["test_language", "measure", "masked", *COLUMNS])
    table = bootstrap_statistics(deltas, statistic, resample, replicates, seed)
    names = table["statistic"].str.split(":", expand=True)
    texts = {code: len(deltas[code]) for code in languages}
    result = pd.DataFrame(
        {
            "test_language": names[0],
            "measure": "diagonal_" + names[1],
            "masked": _masked_kind(frame["condition"].unique()),
            "value": table["value"],
            "lo": table["lo"],
            "hi": table["hi"],
            "n": [texts.get(code, sum(texts.values())) for code in names[0]],
        }
    )
    # under MIN_UNITS texts a percentile interval is a zero-width artefact: the one schema says NaN.
    # A ratio undefined in over 5 % of the draws (an off-diagonal rise near 0) has no interval either:
    # the defined draws alone are a biased sample, and their interval can exclude the estimate.
    undefined = table["replicates"].to_numpy() < (1 - UNDEFINED_SHARE) * replicates
    result.loc[(result["n"] < MIN_UNITS).to_numpy() | undefined, ["lo", "hi"]] = np.nan
    return result
