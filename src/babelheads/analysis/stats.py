"""Bootstrap intervals over units: the one place the analyses resample.

A unit is what was drawn independently (a sample, a question, a text). Every interval here is a
percentile bootstrap: the units are drawn with replacement from a generator seeded with ``seed``, the
statistic is recomputed on each draw, and the interval is cut at two percentiles of those draws (linear
interpolation). A paired contrast resamples units, never the two conditions apart, so each draw keeps
the pairing.

Fewer than ``min_units`` units give a NaN interval and a ThinDataWarning: with one unit every draw is
the same, and its zero-width interval would read as a certain result. No values at all (or only NaN)
give NaN everywhere without a warning: nothing was measured, and the caller knows why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd

from babelheads.errors import ThinDataWarning

MIN_UNITS = 2
LEVEL = 0.95

Data = TypeVar("Data")


class Interval(NamedTuple):
    """A point estimate, its interval's bounds (NaN where there is none) and the units behind it.

    The one interval schema: every table writes an interval as ``value``, ``lo``, ``hi``, ``n`` (or,
    where a row holds several, ``<name>``, ``<name>_lo``, ``<name>_hi`` beside one ``n``). For a paired
    contrast ``n`` counts the units that had both conditions; for two independent samples, the smaller.
    """

    value: float
    lo: float
    hi: float
    n: int


COLUMNS = ("value", "lo", "hi", "n")
"""An interval's columns in a table that holds one per row."""


def columns(name: str, interval: Interval) -> dict[str, float]:
    """``interval`` as the columns ``<name>``, ``<name>_lo``, ``<name>_hi`` of a row that holds several
    intervals (the row's ``n`` is written once, by the caller)."""
    return {name: interval.value, f"{name}_lo": interval.lo, f"{name}_hi": interval.hi}


def row(interval: Interval) -> dict[str, float]:
    """``interval`` as the columns value, lo, hi, n of a row that holds one."""
    return dict(zip(COLUMNS, interval, strict=True))


def percentiles(level: float) -> tuple[float, float]:
    """The percentiles bounding a central ``level`` interval: ``(1 - level) / 2 * 100`` and 100 minus it,
    rounded to 10 digits so that 0.95 cuts at exactly (2.5, 97.5), like every other interval here."""
    tail = round((1 - level) / 2 * 100, 10)
    return tail, 100 - tail


def percentile_interval(draws: np.ndarray, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The ``bounds`` percentiles of ``draws`` (shape (replicates,)); NaN for no draws.

    Draws are used as given: where a statistic can be undefined in a draw, the caller drops those first.
    """
    if len(draws) == 0:
        return np.nan, np.nan
    lo, hi = np.percentile(draws, bounds or percentiles(LEVEL))
    return float(lo), float(hi)


def _too_few(units: int, min_units: int, warn: bool) -> bool:
    """Whether ``units`` are too few for an interval; warns (``warn``) when they are."""
    if units >= min_units:
        return False
    if warn:
        warnings.warn(
            f"{units} unit(s), fewer than {min_units}: no interval (NaN).", ThinDataWarning, stacklevel=3
        )
    return True


def bootstrap_mean(
    values: np.ndarray,
    replicates: int,
    seed: int,
    level: float = LEVEL,
    *,
    min_units: int = MIN_UNITS,
    warn: bool = True,
) -> Interval:
    """The mean of ``values`` (shape (units,)) with a percentile bootstrap interval.

    The draws are one (replicates, units) array of indices from ``default_rng(seed)``: the same
    resamples as ``scipy.stats.bootstrap(..., method="percentile")`` with that generator. ``min_units=1``
    keeps the zero-width interval of one unit (callers whose tables always had it).
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.isnan(values).all():
        return Interval(np.nan, np.nan, np.nan, 0)
    point = float(values.mean())
    if _too_few(len(values), min_units, warn):
        return Interval(point, np.nan, np.nan, len(values))
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), (replicates, len(values)))].mean(axis=1)
    return Interval(point, *percentile_interval(draws, percentiles(level)), len(values))


def paired_contrast(
    first: pd.Series,
    second: pd.Series,
    replicates: int,
    seed: int,
    level: float = LEVEL,
    *,
    min_units: int = MIN_UNITS,
    warn: bool = True,
) -> Interval:
    """mean over units of ``first - second``, each a Series of one value per unit (indexed by unit)
    under one condition. Units missing, or NaN, under either condition are left out; the bootstrap
    resamples the remaining units' differences (:func:`bootstrap_mean`)."""
    differences = (first.astype(float) - second.astype(float)).dropna().to_numpy(float)
    return bootstrap_mean(differences, replicates, seed, level, min_units=min_units, warn=warn)


def difference_of_means(
    first: np.ndarray,
    second: np.ndarray,
    replicates: int,
    seed: int,
    level: float = LEVEL,
    *,
    min_units: int = MIN_UNITS,
    warn: bool = True,
) -> Interval:
    """mean(first) - mean(second) for two independent samples (shapes (n,) and (m,)), each resampled on
    its own: all of ``first``'s draws, then all of ``second``'s, from one generator. NaN when either is
    empty; the interval needs ``min_units`` on both sides."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    units = min(len(first), len(second))
    if units == 0:
        return Interval(np.nan, np.nan, np.nan, 0)
    point = float(first.mean() - second.mean())
    if _too_few(units, min_units, warn):
        return Interval(point, np.nan, np.nan, units)
    rng = np.random.default_rng(seed)
    first_draws = first[rng.integers(0, len(first), (replicates, len(first)))].mean(axis=1)
    second_draws = second[rng.integers(0, len(second), (replicates, len(second)))].mean(axis=1)
    return Interval(point, *percentile_interval(first_draws - second_draws, percentiles(level)), units)


def nested_contrast(
    first: np.ndarray,
    second: np.ndarray,
    replicates: int,
    seed: int,
    *,
    bounds: tuple[float, float] | None = None,
    min_units: int = MIN_UNITS,
    warn: bool = True,
) -> Interval:
    """mean over units of (row mean of ``first``) - (row mean of ``second``), paired by unit.

    first : shape (units, a), each unit's values under ``a`` conditions of one kind (the seeds of a
    random head set); second : shape (units, b), ``b`` may be 0 (then the mean level of ``first``).
    Each draw resamples the units and, on a side with several conditions, those conditions too: the
    spread between them belongs in the interval. The generator draws, per replicate, the units, then
    ``first``'s conditions, then ``second``'s.
    """
    units = len(first)
    if units == 0:
        return Interval(np.nan, np.nan, np.nan, 0)
    columns_first, columns_second = first.shape[1], second.shape[1]

    def estimate(rows: np.ndarray, chosen_first: np.ndarray, chosen_second: np.ndarray) -> float:
        left = first[np.ix_(rows, chosen_first)].mean(axis=1)
        right = second[np.ix_(rows, chosen_second)].mean(axis=1) if columns_second else 0.0
        return float(np.mean(left - right))

    point = estimate(np.arange(units), np.arange(columns_first), np.arange(columns_second))
    if np.isnan(point) or _too_few(units, min_units, warn):
        return Interval(point, np.nan, np.nan, units)
    rng = np.random.default_rng(seed)
    draws = np.empty(replicates)
    for index in range(replicates):
        rows = rng.integers(0, units, units)
        chosen_first = _draw_columns(rng, columns_first)
        draws[index] = estimate(rows, chosen_first, _draw_columns(rng, columns_second))
    return Interval(point, *percentile_interval(draws, bounds), units)


def _draw_columns(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` conditions drawn with replacement; a single one is kept without a draw (so a side
    with one condition does not move the generator)."""
    return rng.integers(0, count, count) if count > 1 else np.arange(count)


def bootstrap_statistics(
    data: Data,
    statistic: Callable[[Data], dict[str, float]],
    resample: Callable[[Data, np.random.Generator], Data],
    replicates: int,
    seed: int,
    bounds: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Intervals for every value ``statistic`` returns, from ``replicates`` draws of ``resample(data,
    rng)`` with one generator. A draw where a value is NaN (or missing) does not count towards its
    interval (a ratio whose denominator drew zero).

    Returns one row per value: statistic, value (on ``data``), lo, hi, replicates (draws counted).
    """
    point = statistic(data)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(replicates):
        values = statistic(resample(data, rng))
        for name in point:
            draws[name].append(values.get(name, np.nan))
    rows = []
    for name, value in point.items():
        sample = np.asarray(draws[name], dtype=float)
        sample = sample[~np.isnan(sample)]
        lo, hi = percentile_interval(sample, bounds)
        rows.append({"statistic": name, "value": value, "lo": lo, "hi": hi, "replicates": len(sample)})
    return pd.DataFrame(rows)
