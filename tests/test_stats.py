"""analysis/stats.py: the percentile bootstrap, paired contrasts and the minimum-sample rule."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from babelheads.analysis.stats import (
    bootstrap_mean,
    bootstrap_statistics,
    difference_of_means,
    nested_contrast,
    paired_contrast,
    percentile_interval,
    percentiles,
)
from babelheads.errors import ThinDataWarning

# ---------------------------------------------------------------------------------------------------
# Percentiles and the bootstrap of a mean.
# ---------------------------------------------------------------------------------------------------


def test_percentile_interval_interpolates_linearly_between_draws():
    draws = np.array([4.0, 0.0, 2.0, 1.0, 3.0])
    # sorted 0..4: the 10th percentile sits 0.4 of the way from 0 to 1, the 90th at 3.6
    assert percentile_interval(draws, (10, 90)) == pytest.approx((0.4, 3.6))
    assert percentile_interval(draws, (25, 75)) == (1.0, 3.0)
    assert all(math.isnan(bound) for bound in percentile_interval(np.array([])))


def test_every_interval_cuts_at_the_same_percentiles():
    # (1 - 0.95) / 2 * 100 is 2.500000000000002 in floating point; every estimator cuts at 2.5
    assert percentiles(0.95) == (2.5, 97.5) and percentiles(0.9) == (5.0, 95.0)
    draws = np.linspace(0.0, 1.0, 41)
    assert percentile_interval(draws) == percentile_interval(draws, percentiles(0.95))


def test_bootstrap_mean_of_two_units_by_hand():
    # Each draw of two units from {0, 10} has mean 0 (p = 1/4), 5 (1/2) or 10 (1/4): with 1000 draws
    # far more than 2.5 % lie at each end, so the interval is the whole range and the mean is 5.
    value, low, high, _ = bootstrap_mean(np.array([0.0, 10.0]), replicates=1000, seed=0)
    assert (value, low, high) == (5.0, 0.0, 10.0)
    # no spread, no width
    assert tuple(bootstrap_mean(np.array([3.0, 3.0, 3.0]), 200, 1)) == (3.0, 3.0, 3.0, 3)


def test_bootstrap_mean_draws_the_resamples_scipy_draws():
    """Same generator, same (replicates, units) index array: the same resamples as scipy's percentile
    bootstrap, so the same interval up to the rounding of the cut (scipy cuts at quantile 1 - 0.025,
    stats at percentile 97.5): agreement to 1e-12, not Monte Carlo error."""
    values = np.random.default_rng(42).normal(size=9)
    for seed in range(5):
        ours = bootstrap_mean(values, 999, seed)
        theirs = scipy_stats.bootstrap(
            (values,),
            np.mean,
            n_resamples=999,
            method="percentile",
            confidence_level=0.95,
            rng=np.random.default_rng(seed),
            vectorized=True,
        ).confidence_interval
        assert ours.value == pytest.approx(values.mean(), abs=1e-15)
        assert (ours.lo, ours.hi) == pytest.approx((theirs.low, theirs.high), abs=1e-12)


def test_bootstrap_mean_is_seeded():
    values = np.random.default_rng(3).random(12)
    assert bootstrap_mean(values, 300, 7) == bootstrap_mean(values, 300, 7)
    assert bootstrap_mean(values, 300, 7) != bootstrap_mean(values, 300, 8)


# ---------------------------------------------------------------------------------------------------
# Paired and unpaired contrasts.
# ---------------------------------------------------------------------------------------------------


def test_paired_contrast_by_hand():
    first = pd.Series({"a": 1.0, "b": 3.0, "c": 5.0, "d": np.nan})
    second = pd.Series({"a": 0.0, "b": 1.0, "c": 5.0, "e": 2.0})
    # d is NaN under the first condition and e missing from it: a, b, c pair, differences 1, 2, 0
    contrast = paired_contrast(first, second, replicates=500, seed=4)
    assert contrast.n == 3
    assert contrast.value == 1.0
    assert (contrast.lo, contrast.hi) == tuple(bootstrap_mean(np.array([1.0, 2.0, 0.0]), 500, 4))[1:3]
    assert 0.0 <= contrast.lo <= 1.0 <= contrast.hi <= 2.0


def test_paired_contrast_resamples_units_not_conditions():
    # The second condition is the first plus 0.5 in every unit: the spread between units cancels in
    # the pairing, so the interval has no width; drawn apart (unpaired) it is wide.
    first = pd.Series(np.random.default_rng(0).normal(size=10))
    second = first + 0.5
    paired = paired_contrast(first, second, 400, 1)
    assert paired.value == pytest.approx(-0.5)
    assert (paired.lo, paired.hi) == pytest.approx((-0.5, -0.5))
    apart = difference_of_means(first.to_numpy(), second.to_numpy(), 400, 1)
    assert apart.value == pytest.approx(-0.5)
    assert apart.hi - apart.lo > 0.5


def test_difference_of_means_by_hand():
    # one value per side repeated: every draw gives 4 - 1
    # n is the smaller side's units
    found = difference_of_means(np.array([4.0, 4.0]), np.array([1.0, 1.0, 1.0]), 100, 0)
    assert tuple(found) == (3.0, 3.0, 3.0, 2)


def test_nested_contrast_resamples_the_conditions_of_a_side():
    units = np.arange(6, dtype=float)[:, None]
    # Two random head sets 1 apart, each unit the same: the level of the pair is 0.5 above the units,
    # and only the draw between the sets (not the units: they cancel) moves it.
    first = np.hstack([units + 1.0, units])
    contrast = nested_contrast(first, units, 400, 0)
    assert contrast.value == 0.5 and contrast.n == 6
    assert (contrast.lo, contrast.hi) == (0.0, 1.0)
    # with no second side: the mean level of the first
    assert nested_contrast(units, np.empty((6, 0)), 100, 0).value == 2.5


def test_bootstrap_statistics_counts_only_defined_draws():
    data = np.array([0.0, 1.0])

    def statistic(values: np.ndarray) -> dict[str, float]:
        mean = float(values.mean())
        # undefined when the draw holds only zeros (p = 1/4)
        return {"mean": mean, "inverse": 1 / mean if mean else np.nan}

    table = bootstrap_statistics(
        data, statistic, lambda values, rng: values[rng.integers(0, 2, 2)], 400, 0
    ).set_index("statistic")
    assert table.loc["mean", "value"] == 0.5 and table.loc["inverse", "value"] == 2.0
    assert table.loc["mean", "replicates"] == 400
    assert 200 < table.loc["inverse", "replicates"] < 400
    assert (table.loc["mean", "lo"], table.loc["mean", "hi"]) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# The minimum-sample rule.
# ---------------------------------------------------------------------------------------------------


def test_one_unit_gives_a_nan_interval_and_a_warning():
    with pytest.warns(ThinDataWarning, match="1 unit"):
        value, low, high, _ = bootstrap_mean(np.array([0.7]), 100, 0)
    assert value == 0.7 and math.isnan(low) and math.isnan(high)
    with pytest.warns(ThinDataWarning):
        contrast = paired_contrast(pd.Series({"a": 1.0, "b": 2.0}), pd.Series({"a": 0.0}), 100, 0)
    assert (contrast.value, contrast.n) == (1.0, 1) and math.isnan(contrast.lo)
    with pytest.warns(ThinDataWarning):
        apart = difference_of_means(np.array([1.0, 2.0]), np.array([0.0]), 100, 0)
    assert apart.value == 1.5 and math.isnan(apart.hi)
    with pytest.warns(ThinDataWarning):
        nested = nested_contrast(np.array([[1.0, 2.0]]), np.array([[0.0]]), 100, 0)
    assert nested.value == 1.5 and math.isnan(nested.lo)


def test_the_rule_can_be_relaxed_or_silenced_by_callers_that_keep_their_tables():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # min_units=1: a caller may ask for the zero-width interval of one unit
        assert tuple(bootstrap_mean(np.array([0.7]), 100, 0, min_units=1)) == (0.7, 0.7, 0.7, 1)
        # warn=False: the caller warns once for the whole table
        assert math.isnan(bootstrap_mean(np.array([0.7]), 100, 0, warn=False).lo)
        # nothing measured: NaN everywhere, and nothing to warn of
        assert all(math.isnan(bound) for bound in bootstrap_mean(np.array([]), 100, 0)[:3])
        assert all(math.isnan(bound) for bound in bootstrap_mean(np.array([np.nan, np.nan]), 100, 0)[:3])
        assert paired_contrast(pd.Series(dtype=float), pd.Series(dtype=float), 100, 0).n == 0
