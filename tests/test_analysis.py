"""The analyses on small hand-made inputs whose answers are worked out by hand, and checks against scipy."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from babelheads.analysis.ablation import HeadSet, effects, paired_delta, select_head_sets
from babelheads.analysis.crosslingual import (
    generality_table,
    overlap_statistics,
    overlap_table,
    pair_subsets,
    rank_agreement,
    split_keys,
)
from babelheads.analysis.distribution import (
    BINS,
    distribution,
    retrieval_head_share,
    score_bin,
    top_heads,
)
from babelheads.analysis.scores import ScoreMatrix, bootstrap
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress

# ---------------------------------------------------------------------------------------------------
# Overlap across languages. Eight heads (layer-head), threshold 0.1:
#   0-0  de .5  en .6  zh .2    -> de+en+zh
#   0-1  de 0   en 0   zh 0     -> nowhere
#   1-0  de .3  en .1  zh 0     -> de+en   (en exactly at the threshold counts)
#   1-1  de .05 en .4  zh .09   -> en
#   2-0  de .2  en .3  zh .7    -> de+en+zh
#   2-1  de 0   en 0   zh .8    -> zh
#   3-0  de 0   en .2  zh 0     -> en
#   3-1  de .099 en 0  zh .15   -> zh      (de just below the threshold)
# ---------------------------------------------------------------------------------------------------

LAYERS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
HEADS = np.array([0, 1, 0, 1, 0, 1, 0, 1])
LABELS = [f"{layer}-{head}" for layer, head in zip(LAYERS, HEADS, strict=True)]
OVERLAP_SCORES = {
    "de": np.array([0.5, 0.0, 0.3, 0.05, 0.2, 0.0, 0.0, 0.099]),
    "en": np.array([0.6, 0.0, 0.1, 0.4, 0.3, 0.0, 0.2, 0.0]),
    "zh": np.array([0.2, 0.0, 0.0, 0.09, 0.7, 0.8, 0.0, 0.15]),
}


def _rows(table: pd.DataFrame) -> dict[str, dict]:
    return {row["languages"]: row for row in table.to_dict("records")}


def test_overlap_table_puts_each_head_in_the_row_of_exactly_its_languages():
    table = overlap_table(OVERLAP_SCORES, LAYERS, LABELS, threshold=0.1)
    rows = _rows(table)
    assert list(table["languages"]) == ["de+en+zh", "de+en", "de+zh", "en+zh", "de", "en", "zh"]
    expected = {
        "de+en+zh": (["0-0", "2-0"], 1.0),
        "de+en": (["1-0"], 1.0),
        "de+zh": ([], None),
        "en+zh": ([], None),
        "de": ([], None),
        "en": (["1-1", "3-0"], 2.0),
        "zh": (["2-1", "3-1"], 2.5),
    }
    for languages, (heads, mean_layer) in expected.items():
        row = rows[languages]
        assert row["heads"] == heads, languages
        assert row["count"] == len(heads), languages
        assert row["n_languages"] == languages.count("+") + 1
        if mean_layer is None:
            assert math.isnan(row["mean_layer"]), languages
        else:
            assert row["mean_layer"] == pytest.approx(mean_layer), languages


def test_overlap_table_leaves_out_a_head_below_threshold_everywhere():
    table = overlap_table(OVERLAP_SCORES, LAYERS, LABELS, threshold=0.1)
    every_head = [head for heads in table["heads"] for head in heads]
    assert "0-1" not in every_head
    # Every other head appears exactly once.
    assert sorted(every_head) == sorted(label for label in LABELS if label != "0-1")
    assert table["count"].sum() == 7


def test_overlap_table_follows_the_threshold():
    # At 0.25 head 1-0 keeps only de (.3), 0-0 drops out of zh (.2), 2-0 drops out of de (.2).
    rows = _rows(overlap_table(OVERLAP_SCORES, LAYERS, LABELS, threshold=0.25))
    assert rows["de+en+zh"]["heads"] == []
    assert rows["de+en"]["heads"] == ["0-0"]
    assert rows["de"]["heads"] == ["1-0"]
    assert rows["en+zh"]["heads"] == ["2-0"]


def test_overlap_statistics_match_hand_computed_shares_and_layers():
    result = overlap_statistics(OVERLAP_SCORES, LAYERS, threshold=0.1, strong=0.5)
    # Retrieval heads anywhere: all but 0-1 -> 7. Shared: 0-0, 2-0. Specific: 1-1, 2-1, 3-0, 3-1.
    assert result["retrieval_heads"] == 7
    assert result["shared_share"] == pytest.approx(2 / 7)
    assert result["specific_share"] == pytest.approx(4 / 7)
    assert result["mean_layer_shared"] == pytest.approx((0 + 2) / 2)
    assert result["mean_layer_specific"] == pytest.approx((1 + 2 + 3 + 3) / 4)
    # Peaks: .6 0 .3 .4 .7 .8 .2 .15 -> strong (>= .5): 0-0, 2-0, 2-1; of these 0-0 and 2-0 are shared.
    assert result["strong_heads"] == 3
    assert result["strong_shared_share"] == pytest.approx(2 / 3)


def test_overlap_statistics_count_a_peak_exactly_at_strong_as_strong():
    scores = {"en": np.array([0.5, 0.2, 0.0]), "de": np.array([0.3, 0.49, 0.0])}
    result = overlap_statistics(scores, np.array([0, 1, 2]), threshold=0.1, strong=0.5)
    assert result["strong_heads"] == 1
    assert result["strong_shared_share"] == 1.0
    assert result["shared_share"] == 1.0


def test_overlap_statistics_without_retrieval_heads_are_nan_not_an_error():
    quiet = {language: np.full(len(LAYERS), 0.05) for language in ("de", "en", "zh")}
    result = overlap_statistics(quiet, LAYERS, threshold=0.1, strong=0.5)
    assert result["retrieval_heads"] == 0
    assert result["strong_heads"] == 0
    for key in (
        "shared_share",
        "specific_share",
        "mean_layer_shared",
        "mean_layer_specific",
        "strong_shared_share",
    ):
        assert math.isnan(result[key]), key


def test_generality_table_counts_languages_and_scores_per_head():
    table = generality_table(OVERLAP_SCORES, LAYERS, HEADS, threshold=0.1)
    assert list(table["layer"]) == list(LAYERS)
    assert list(table["head"]) == list(HEADS)
    assert list(table["n_languages"]) == [3, 0, 2, 1, 3, 1, 1, 1]
    np.testing.assert_allclose(table["max_score"], [0.6, 0.0, 0.3, 0.4, 0.7, 0.8, 0.2, 0.15])
    np.testing.assert_allclose(table["mean_score"], np.mean(np.stack(list(OVERLAP_SCORES.values())), axis=0))


# ---------------------------------------------------------------------------------------------------
# Rank agreement. Eight heads, two languages:
#   en  .9  .6  .3  .3  .2  .05  0    .12
#   de  .7  .2  .55 .1  .25 0    .08  0
#   peak .9 .6 .55 .3 .25 .05 .08 .12 -> strong {0, 1, 2}, weak {3, 4, 7}, neither {5, 6}
#   rank en (1 = highest, ties averaged): 1 2 3.5 3.5 5 7 8 6
#   rank de:                              1 4 2   5   3 7.5 6 7.5
# ---------------------------------------------------------------------------------------------------

RANK_EN = np.array([0.9, 0.6, 0.3, 0.3, 0.2, 0.05, 0.0, 0.12])
RANK_DE = np.array([0.7, 0.2, 0.55, 0.1, 0.25, 0.0, 0.08, 0.0])


def test_pair_subsets_split_heads_by_the_peak_of_the_pair():
    subsets = pair_subsets(RANK_EN, RANK_DE, threshold=0.1, strong=0.5)
    assert subsets["all"].tolist() == [True] * 8
    assert np.flatnonzero(subsets["strong"]).tolist() == [0, 1, 2]
    assert np.flatnonzero(subsets["weak"]).tolist() == [3, 4, 7]
    # Boundaries: exactly `strong` is strong, exactly `threshold` is weak, just below is neither.
    edge = pair_subsets(np.array([0.5, 0.1, 0.0999]), np.array([0.0, 0.0, 0.0]), 0.1, 0.5)
    assert edge["strong"].tolist() == [True, False, False]
    assert edge["weak"].tolist() == [False, True, False]


def test_rank_agreement_all_heads_equals_scipy():
    result = rank_agreement({"en": RANK_EN, "de": RANK_DE}, threshold=0.1, strong=0.5)
    assert result["heads|en-de|all"] == 8
    assert result["spearman|en-de|all"] == pytest.approx(stats.spearmanr(RANK_EN, RANK_DE).statistic)
    assert result["kendall|en-de|all"] == pytest.approx(stats.kendalltau(RANK_EN, RANK_DE).statistic)


def test_rank_agreement_strong_and_weak_use_exactly_the_pair_subsets():
    result = rank_agreement({"en": RANK_EN, "de": RANK_DE}, threshold=0.1, strong=0.5)
    subsets = pair_subsets(RANK_EN, RANK_DE, 0.1, 0.5)
    for subset in ("strong", "weak"):
        mask = subsets[subset]
        assert result[f"heads|en-de|{subset}"] == mask.sum() == 3
        assert result[f"spearman|en-de|{subset}"] == pytest.approx(
            stats.spearmanr(RANK_EN[mask], RANK_DE[mask]).statistic
        )
        assert result[f"kendall|en-de|{subset}"] == pytest.approx(
            stats.kendalltau(RANK_EN[mask], RANK_DE[mask]).statistic
        )
    # By hand. strong: en .9 .6 .3, de .7 .2 .55 -> one swapped pair: rho = 1 - 6*2/24, tau = (2-1)/3.
    assert result["spearman|en-de|strong"] == pytest.approx(0.5)
    assert result["kendall|en-de|strong"] == pytest.approx(1 / 3)
    # weak: en .3 .2 .12, de .1 .25 0 -> the same.
    assert result["spearman|en-de|weak"] == pytest.approx(0.5)
    assert result["kendall|en-de|weak"] == pytest.approx(1 / 3)


def test_rank_diff_uses_ranks_over_all_heads_with_one_highest_and_ties_averaged():
    result = rank_agreement({"en": RANK_EN, "de": RANK_DE}, threshold=0.1, strong=0.5)
    # |rank en - rank de| = 0 2 1.5 1.5 2 .5 2 1.5
    assert result["rank_diff|en-de|all"] == pytest.approx(11 / 8)
    assert result["rank_diff|en-de|strong"] == pytest.approx((0 + 2 + 1.5) / 3)
    assert result["rank_diff|en-de|weak"] == pytest.approx((1.5 + 2 + 1.5) / 3)


def test_rank_agreement_with_fewer_than_three_heads_in_a_subset_is_nan():
    en = np.array([0.9, 0.6, 0.0, 0.0])
    de = np.array([0.7, 0.0, 0.05, 0.0])
    result = rank_agreement({"en": en, "de": de}, threshold=0.1, strong=0.5)
    # strong: heads 0 and 1 only; weak: none.
    assert result["heads|en-de|strong"] == 2
    assert result["heads|en-de|weak"] == 0
    for measure in ("spearman", "kendall"):
        assert math.isnan(result[f"{measure}|en-de|strong"])
        assert math.isnan(result[f"{measure}|en-de|weak"])
        assert not math.isnan(result[f"{measure}|en-de|all"])
    # rank en: 1 2 3.5 3.5; rank de: 1 3.5 2 3.5 -> strong |diffs| 0, 1.5; weak has no heads.
    assert result["rank_diff|en-de|strong"] == pytest.approx(0.75)
    assert math.isnan(result["rank_diff|en-de|weak"])


def test_rank_agreement_without_variation_is_nan():
    flat = np.full(5, 0.3)
    result = rank_agreement({"en": RANK_EN[:5], "de": flat}, threshold=0.1, strong=0.5)
    assert math.isnan(result["spearman|en-de|all"])
    assert math.isnan(result["kendall|en-de|all"])


def test_rank_agreement_covers_every_pair_in_order_and_split_keys_reads_the_keys():
    scores = {"en": RANK_EN, "de": RANK_DE, "zh": RANK_EN[::-1].copy()}
    result = rank_agreement(scores)
    per_pair = {key: value for key, value in result.items() if not key.split("|")[0].endswith("_gap")}
    assert {key.split("|")[1] for key in per_pair} == {"en-de", "en-zh", "de-zh"}
    assert len(per_pair) == 3 * 3 * 4  # pairs x subsets x measures
    gaps = {key: value for key, value in result.items() if key not in per_pair}
    assert len(gaps) == 3 + 3  # a weak-strong gap per pair; each anchor's two partners compared
    expected = result["spearman|en-de|all"] - result["spearman|en-zh|all"]
    assert gaps["spearman_gap|en:de>zh|all"] == pytest.approx(expected)
    weak_strong = result["rank_diff|en-de|weak"] - result["rank_diff|en-de|strong"]
    assert gaps["rank_diff_gap|en-de|weak-strong"] == pytest.approx(weak_strong, nan_ok=True)
    frame = split_keys(pd.DataFrame({"statistic": ["spearman|en-de|all", "rank_diff|de-zh|weak"]}))
    assert frame["measure"].tolist() == ["spearman", "rank_diff"]
    assert frame["pair"].tolist() == ["en-de", "de-zh"]
    assert frame["subset"].tolist() == ["all", "weak"]


# ---------------------------------------------------------------------------------------------------
# Score matrices and the bootstrap.
# ---------------------------------------------------------------------------------------------------


def _matrix(per_sample: dict[str, np.ndarray]) -> ScoreMatrix:
    n_heads = next(iter(per_sample.values())).shape[1]
    return ScoreMatrix(np.arange(n_heads) // 2, np.arange(n_heads) % 2, per_sample)


def test_top_k_beyond_the_retrieval_heads_is_refused_with_the_count_there_is():
    retrieval = int((_scores_frame(HEAD_TABLE).groupby(["layer", "head"])["score"].mean() >= 0.1).sum())
    with pytest.raises(BabelheadsError, match=rf"Only {retrieval} heads .* Use --k up to {retrieval}"):
        _select([retrieval + 1], ["top"])


def test_mean_of_a_condition_without_samples_is_nan_not_zero():
    matrix = _matrix({"en": np.array([[0.2, 0.4, 0.0], [0.4, 0.0, 1.0]]), "de": np.empty((0, 3))})
    means = matrix.mean()
    np.testing.assert_allclose(means["en"], [0.3, 0.2, 0.5])
    assert means["de"].shape == (3,)
    assert np.isnan(means["de"]).all()
    assert matrix.labels() == ["0-0", "0-1", "1-0"]
    assert matrix.conditions == ["en", "de"]


def test_resample_keeps_shapes_and_draws_rows_of_the_original():
    rng = np.random.default_rng(3)
    original = {"en": rng.random((7, 4)), "de": rng.random((3, 4)), "zh": np.empty((0, 4))}
    matrix = _matrix(original)
    drawn = matrix.resample(np.random.default_rng(1))
    assert drawn.conditions == matrix.conditions
    for condition, values in original.items():
        assert drawn.per_sample[condition].shape == values.shape
        rows = {tuple(row) for row in values}
        assert all(tuple(row) in rows for row in drawn.per_sample[condition])
    assert drawn.layers is matrix.layers and drawn.heads is matrix.heads


def _statistic(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {"en0": float(scores["en"][0]), "gap": float(scores["en"][1] - scores["de"][1])}


def test_bootstrap_of_identical_samples_collapses_every_interval_to_the_point():
    row = np.array([0.3, 0.7, 0.0, 0.15])
    matrix = _matrix({"en": np.tile(row, (6, 1)), "de": np.tile(row[::-1], (4, 1))})
    frame = bootstrap(matrix, _statistic, replicates=50, seed=0)
    assert list(frame.columns) == ["statistic", "value", "lo", "hi", "n", "replicates"]
    assert (frame["n"] == 4).all()  # the fewest samples of any condition
    assert frame["statistic"].tolist() == ["en0", "gap"]
    assert frame["value"].tolist() == pytest.approx([0.3, 0.7 - 0.0])
    assert (frame["lo"] == frame["value"]).all()
    assert (frame["hi"] == frame["value"]).all()
    assert (frame["replicates"] == 50).all()


def test_bootstrap_of_crosslingual_statistics_on_identical_samples_collapses():
    scores = {language: np.tile(values, (5, 1)) for language, values in OVERLAP_SCORES.items()}
    matrix = ScoreMatrix(LAYERS, HEADS, scores)
    frame = bootstrap(
        matrix, lambda means: {**overlap_statistics(means, LAYERS), **rank_agreement(means)}, 20, seed=4
    )
    finite = frame[frame["value"].notna()]
    assert len(finite) > 10
    np.testing.assert_allclose(finite["lo"], finite["value"])
    np.testing.assert_allclose(finite["hi"], finite["value"])
    # A NaN point value (too few heads) is NaN in every replicate: no interval, no replicates.
    missing = frame[frame["value"].isna()]
    assert not missing.empty
    assert missing["lo"].isna().all() and missing["hi"].isna().all()
    assert (missing["replicates"] == 0).all()


def _varied() -> ScoreMatrix:
    rng = np.random.default_rng(11)
    return _matrix({"en": rng.random((25, 4)), "de": rng.random((30, 4))})


def test_bootstrap_interval_contains_the_point_and_is_the_percentile_of_the_replicates():
    matrix = _varied()
    frame = bootstrap(matrix, _statistic, replicates=100, seed=5).set_index("statistic")
    point = _statistic(matrix.mean())
    for name, value in point.items():
        assert frame.loc[name, "value"] == pytest.approx(value)
        assert frame.loc[name, "lo"] < value < frame.loc[name, "hi"]
    # The same draws replayed by hand give the same 2.5 and 97.5 percentiles.
    rng = np.random.default_rng(5)
    draws = [_statistic(matrix.resample(rng).mean())["en0"] for _ in range(100)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    assert frame.loc["en0", "lo"] == pytest.approx(lo)
    assert frame.loc["en0", "hi"] == pytest.approx(hi)


def test_bootstrap_is_reproducible_for_a_seed_and_differs_for_another():
    matrix = _varied()
    first = bootstrap(matrix, _statistic, replicates=60, seed=1)
    again = bootstrap(matrix, _statistic, replicates=60, seed=1)
    other = bootstrap(matrix, _statistic, replicates=60, seed=2)
    pd.testing.assert_frame_equal(first, again)
    assert (first["value"] == other["value"]).all()
    assert not np.allclose(first[["lo", "hi"]].to_numpy(), other[["lo", "hi"]].to_numpy())


def test_bootstrap_level_narrows_the_interval():
    matrix = _varied()
    wide = bootstrap(matrix, _statistic, replicates=100, seed=0, level=0.95)
    narrow = bootstrap(matrix, _statistic, replicates=100, seed=0, level=0.5)
    assert (narrow["lo"] > wide["lo"]).all()
    assert (narrow["hi"] < wide["hi"]).all()


def test_bootstrap_drops_nan_replicates_and_counts_the_rest():
    # Head 0 of en scores only in the first of five samples: a replicate without that sample has mean 0,
    # and the statistic is NaN there (or missing altogether for the second key).
    values = np.zeros((5, 2))
    values[0, 0] = 1.0
    values[:, 1] = [0.1, 0.2, 0.3, 0.4, 0.5]
    matrix = _matrix({"en": values})

    def statistic(scores: dict[str, np.ndarray]) -> dict[str, float]:
        if scores["en"][0] > 0:
            return {"hit": 1.0, "other": float(scores["en"][1])}
        return {"hit": np.nan}

    replicates = 200
    frame = bootstrap(matrix, statistic, replicates=replicates, seed=7).set_index("statistic")
    rng = np.random.default_rng(7)
    expected = sum(matrix.resample(rng).mean()["en"][0] > 0 for _ in range(replicates))
    assert 0 < expected < replicates
    assert frame.loc["hit", "replicates"] == expected
    assert frame.loc["other", "replicates"] == expected
    assert frame.loc["hit", "lo"] == frame.loc["hit", "hi"] == 1.0


# ---------------------------------------------------------------------------------------------------
# Head sets. Two languages (a third, zh, is in the table but not asked for), threshold 0.1:
#   0-0  en .9   de .8   mean .85                agnostic
#   0-1  en 0    de 0                            pool
#   0-2  en .55  de .09  mean .32   peak .55     specific  (de just below the threshold)
#   0-3  en .04  de 0    mean .02                pool
#   1-0  en .3   de .3   mean .3    peak .3      agnostic
#   1-1  en 0    de .6   mean .3    peak .6      specific  (ties 1-0 on mean; 1-0 comes first)
#   1-2  en 0    de .04  mean .02                pool      (ties 0-3 on mean; 0-3 comes first)
#   1-3  en .35  de .1   mean .225  peak .35     agnostic  (de exactly at the threshold)
# Mean and peak order the agnostic heads 1-0, 1-3 and the specific heads 0-2, 1-1 differently.
# ---------------------------------------------------------------------------------------------------

HEAD_TABLE = {
    (0, 0): (0.9, 0.8),
    (0, 1): (0.0, 0.0),
    (0, 2): (0.55, 0.09),
    (0, 3): (0.04, 0.0),
    (1, 0): (0.3, 0.3),
    (1, 1): (0.0, 0.6),
    (1, 2): (0.0, 0.04),
    (1, 3): (0.35, 0.1),
}


def _scores_frame(table: dict[tuple[int, int], tuple[float, ...]], languages=("en", "de")) -> pd.DataFrame:
    rows = [
        {"language": language, "layer": layer, "head": head, "score": score}
        for (layer, head), values in table.items()
        for language, score in zip(languages, values, strict=True)
    ]
    return pd.DataFrame(rows)


def _with_zh() -> pd.DataFrame:
    # zh would make 1-2 the top head and a retrieval head everywhere if it were counted.
    zh = pd.DataFrame(
        [{"language": "zh", "layer": layer, "head": head, "score": 0.0} for layer, head in HEAD_TABLE]
    )
    zh.loc[(zh["layer"] == 1) & (zh["head"] == 2), "score"] = 9.0
    return pd.concat([_scores_frame(HEAD_TABLE), zh], ignore_index=True)


def _select(k_values, names, seeds=1, seed=0, scores=None, threshold=0.1):
    frame = _with_zh() if scores is None else scores
    return select_head_sets(frame, ["en", "de"], k_values, names, seeds, threshold, seed=seed)


def _by_name(sets: list[HeadSet], name: str, k: int) -> list[HeadSet]:
    return [head_set for head_set in sets if head_set.name == name and head_set.k == k]


def _addresses(*pairs: tuple[int, int]) -> tuple[HeadAddress, ...]:
    return tuple(HeadAddress(layer, head) for layer, head in pairs)


def test_top_k_are_the_highest_mean_scores_with_ties_broken_by_address():
    sets = _select([1, 3, 4, 7], ["top"], threshold=0.0)
    assert _by_name(sets, "top", 4)[0].heads == _addresses((0, 0), (0, 2), (1, 0), (1, 1))
    assert _by_name(sets, "top", 1)[0].heads == _addresses((0, 0))
    assert _by_name(sets, "top", 3)[0].heads == _addresses((0, 0), (0, 2), (1, 0))
    assert _by_name(sets, "top", 7)[0].heads == _addresses(
        (0, 0), (0, 2), (1, 0), (1, 1), (1, 3), (0, 3), (1, 2)
    )
    assert all(head_set.seed == -1 for head_set in sets if head_set.name == "top")


def test_the_none_set_comes_once_with_no_heads_and_mask_id_baseline():
    sets = _select([1, 2], ["top", "agnostic"])
    none = [head_set for head_set in sets if head_set.name == "none"]
    assert len(none) == 1
    assert none[0].heads == ()
    assert none[0].k == 0
    assert none[0].mask_id == "baseline"
    assert all(head_set.mask_id != "baseline" for head_set in sets if head_set.heads)


def test_mask_id_depends_on_the_heads_not_their_order_or_the_set_name():
    a, b = HeadAddress(0, 1), HeadAddress(2, 3)
    first = HeadSet("top", 2, -1, (a, b))
    assert first.mask_id == HeadSet("agnostic", 5, 3, (b, a)).mask_id
    assert re.fullmatch(r"[0-9a-f]{12}", first.mask_id)
    assert first.mask_id != HeadSet("top", 1, -1, (a,)).mask_id


def test_agnostic_are_retrieval_heads_in_every_language_ranked_by_mean():
    sets = _select([2, 5], ["agnostic"])
    assert _by_name(sets, "agnostic", 2)[0].heads == _addresses((0, 0), (1, 0))
    # Only three heads are retrieval heads in both languages; K=5 gets those three.
    assert _by_name(sets, "agnostic", 5)[0].heads == _addresses((0, 0), (1, 0), (1, 3))


def _own(sets: list[HeadSet], name: str, k: int, language: str) -> tuple[HeadAddress, ...]:
    (found,) = [s for s in sets if s.name == name and s.k == k and s.language == language]
    return found.heads


def test_specific_are_each_languages_own_retrieval_heads_not_shared_by_all():
    sets = _select([1, 2, 5], ["specific"])
    for k in (1, 2, 5):  # en's own: 0-2 (0.55 in en, 0.09 in de); de's own: 1-1; 1-3 is in both
        assert _own(sets, "specific", k, "en") == _addresses((0, 2))
        assert _own(sets, "specific", k, "de") == _addresses((1, 1))
    assert all(s.language == "" for s in sets if s.name != "specific")


def test_specific_is_cut_to_the_size_of_the_agnostic_set_and_matched_by_strength():
    table = {
        (0, 0): (0.9, 0.9),  # the only agnostic head
        (0, 1): (0.8, 0.0),
        (0, 2): (0.0, 0.7),
        (0, 3): (0.6, 0.0),
        (0, 4): (0.0, 0.0),
        (0, 5): (0.0, 0.0),
    }
    both = _select([2], ["agnostic", "specific"], scores=_scores_frame(table))
    assert _by_name(both, "agnostic", 2)[0].heads == _addresses((0, 0))
    assert _own(both, "specific", 2, "en") == _addresses((0, 1))
    assert _own(both, "specific", 2, "de") == _addresses((0, 2))
    # matched within 0.1 on the language's own score: en pairs 0-0 (0.9) with 0-1 (0.8); de's only
    # specific head scores 0.7 against 0.9: no pair, both matched sets empty
    assert _own(both, "agnostic-matched", 2, "en") == _addresses((0, 0))
    assert _own(both, "specific-matched", 2, "en") == _addresses((0, 1))
    assert _own(both, "agnostic-matched", 2, "de") == _own(both, "specific-matched", 2, "de") == ()
    alone = _select([2], ["specific"], scores=_scores_frame(table))
    assert _own(alone, "specific", 2, "en") == _addresses((0, 1), (0, 3))
    assert not [s for s in alone if s.name.endswith("matched")]


def test_agnostic_equal_are_each_languages_strongest_agnostic_heads_as_many_as_its_specific():
    table = {
        (0, 0): (0.9, 0.2),  # agnostic, strongest in en
        (0, 1): (0.2, 0.9),  # agnostic, strongest in de
        (0, 2): (0.5, 0.0),  # en's one specific head
        (0, 3): (0.0, 0.4),  # de's specific heads
        (0, 4): (0.0, 0.3),
        (0, 5): (0.0, 0.0),
        (0, 6): (0.0, 0.0),
    }
    sets = _select([2], ["agnostic", "specific"], scores=_scores_frame(table))
    assert _by_name(sets, "agnostic", 2)[0].heads == _addresses((0, 0), (0, 1))
    assert _own(sets, "specific", 2, "en") == _addresses((0, 2))
    assert _own(sets, "agnostic-equal", 2, "en") == _addresses((0, 0))
    assert _own(sets, "specific", 2, "de") == _addresses((0, 3), (0, 4))
    assert _own(sets, "agnostic-equal", 2, "de") == _addresses((0, 1), (0, 0))
    alone = _select([2], ["specific"], scores=_scores_frame(table))
    assert not [s for s in alone if s.name == "agnostic-equal"]


def test_random_heads_come_only_from_heads_below_threshold_in_every_language():
    sets = _select([2], ["random"], seeds=6)
    pool = set(_addresses((0, 1), (0, 3), (1, 2)))
    drawn = _by_name(sets, "random", 2)
    assert [head_set.seed for head_set in drawn] == list(range(6))
    for head_set in drawn:
        assert len(head_set.heads) == 2
        assert len(set(head_set.heads)) == 2
        assert set(head_set.heads) <= pool
        assert list(head_set.heads) == sorted(head_set.heads)


def _large_pool() -> pd.DataFrame:
    table = {(layer, head): (0.0, 0.05) for layer in range(5) for head in range(6)}
    table[(0, 0)] = (0.9, 0.9)
    table[(2, 3)] = (0.5, 0.0)
    table[(4, 5)] = (0.0, 0.2)
    return _scores_frame(table)


def test_random_heads_are_reproducible_for_a_seed_and_differ_across_draws_and_seeds():
    scores = _large_pool()
    first = _by_name(_select([4], ["random"], seeds=5, seed=0, scores=scores), "random", 4)
    again = _by_name(_select([4], ["random"], seeds=5, seed=0, scores=scores), "random", 4)
    other = _by_name(_select([4], ["random"], seeds=5, seed=1, scores=scores), "random", 4)
    assert [s.heads for s in first] == [s.heads for s in again]
    assert len({s.heads for s in first}) > 1
    assert [s.heads for s in first] != [s.heads for s in other]
    retrieval = set(_addresses((0, 0), (2, 3), (4, 5)))
    for head_set in first + other:
        assert not set(head_set.heads) & retrieval


def test_k_outside_the_number_of_heads_raises():
    with pytest.raises(BabelheadsError, match=r"K=9 is outside \[1, 8\]"):
        _select([2, 9], ["top"])
    with pytest.raises(BabelheadsError, match=r"K=0 is outside \[1, 8\]"):
        _select([0], ["top"])


def test_k_larger_than_the_non_retrieval_pool_names_the_pool_size():
    with pytest.raises(BabelheadsError, match=r"K=4 exceeds the 3 non-retrieval heads"):
        _select([4], ["random"])
    # Without random heads the same K is fine.
    assert _by_name(_select([4], ["top"]), "top", 4)


def test_unknown_head_set_and_missing_language_raise():
    with pytest.raises(BabelheadsError, match="Unknown head set 'bogus'"):
        _select([1], ["top", "bogus"])
    with pytest.raises(BabelheadsError, match="no scores for fr"):
        select_head_sets(_with_zh(), ["en", "fr"], [1], ["top"], 1, 0.1)


# ---------------------------------------------------------------------------------------------------
# Paired deltas and ablation effects.
# ---------------------------------------------------------------------------------------------------


def test_paired_delta_mean_is_the_mean_of_differences():
    masked, baseline = np.array([1, 0, 1, 1]), np.array([1, 1, 0, 0])
    mean, lo, hi, _ = paired_delta(masked, baseline, replicates=200, seed=0)
    assert mean == pytest.approx(0.25)
    assert -1 <= lo <= mean <= hi <= 1
    assert lo < hi
    rng = np.random.default_rng(0)
    differences = masked - baseline
    draws = differences[rng.integers(0, 4, (200, 4))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))


def test_paired_delta_with_equal_differences_has_a_degenerate_interval():
    mean, lo, hi, _ = paired_delta(np.array([1.5, 2.5, 3.5]), np.array([1.0, 2.0, 3.0]), 100, 3)
    assert mean == lo == hi == 0.5


def test_paired_delta_of_nothing_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_delta(np.array([]), np.array([]), 100, 0)
    assert result.n == 0
    assert all(math.isnan(value) for value in result[:3])


def _evaluations() -> pd.DataFrame:
    rows = [
        # baseline
        ("baseline", "en-a", "en", True, 1.0),
        ("baseline", "en-b", "en", False, 0.0),
        ("baseline", "en-c", "en", True, 0.5),
        ("baseline", "de-a", "de", True, 1.0),
        ("baseline", "de-b", "de", True, 0.8),
        # m1: some answers lost; rows in another order than the baseline's
        ("m1", "de-b", "de", False, 0.2),
        ("m1", "en-c", "en", True, 0.5),
        ("m1", "en-a", "en", False, 0.0),
        ("m1", "de-a", "de", True, 1.0),
        ("m1", "en-b", "en", False, 0.0),
        # m2: every sample as in the baseline, rows reversed
        ("m2", "de-b", "de", True, 0.8),
        ("m2", "de-a", "de", True, 1.0),
        ("m2", "en-c", "en", True, 0.5),
        ("m2", "en-b", "en", False, 0.0),
        ("m2", "en-a", "en", True, 1.0),
        # m3: one English sample only, answered where the baseline failed
        ("m3", "en-b", "en", True, 1.0),
    ]
    return pd.DataFrame(rows, columns=["mask_id", "sample_id", "language", "success", "rouge1_recall"])


def _sets() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"name": "none", "k": 0, "seed": -1, "count": 0, "heads": "", "mask_id": "baseline"},
            {"name": "top", "k": 2, "seed": -1, "count": 2, "heads": "0-0 1-0", "mask_id": "m1"},
            {"name": "random", "k": 2, "seed": 0, "count": 2, "heads": "0-1 0-3", "mask_id": "m2"},
            {"name": "agnostic", "k": 1, "seed": -1, "count": 1, "heads": "0-0", "mask_id": "m3"},
        ]
    )


def _effect(table: pd.DataFrame, head_set: str, language: str) -> dict:
    rows = table[(table["head_set"] == head_set) & (table["language"] == language)]
    assert len(rows) == 1, (head_set, language)
    return rows.iloc[0].to_dict()


def test_effects_accuracy_and_deltas_per_language_match_hand_computation():
    table = effects(_evaluations(), _sets(), replicates=100, seed=0)
    top_en = _effect(table, "top", "en")
    assert top_en["accuracy"] == pytest.approx(1 / 3)
    assert top_en["rouge1_recall"] == pytest.approx(0.5 / 3)
    assert top_en["n"] == 3
    assert top_en["delta_accuracy"] == pytest.approx(-1 / 3)  # per sample: -1, 0, 0
    assert top_en["delta_rouge"] == pytest.approx(-1 / 3)  # per sample: -1, 0, 0
    assert (top_en["k"], top_en["seed"], top_en["count"], top_en["heads"]) == (2, -1, 2, "0-0 1-0")
    top_de = _effect(table, "top", "de")
    assert top_de["accuracy"] == pytest.approx(0.5)
    assert top_de["rouge1_recall"] == pytest.approx(0.6)
    assert top_de["delta_accuracy"] == pytest.approx(-0.5)
    assert top_de["delta_rouge"] == pytest.approx(-0.3)
    for language, accuracy in (("en", 2 / 3), ("de", 1.0)):
        none = _effect(table, "none", language)
        assert none["accuracy"] == pytest.approx(accuracy)
        assert none["delta_accuracy"] == none["delta_accuracy_lo"] == none["delta_accuracy_hi"] == 0


def test_effects_pair_by_sample_id_not_by_row_order():
    table = effects(_evaluations(), _sets(), replicates=100, seed=0)
    # m2 repeats the baseline sample by sample in reversed rows: every paired difference is zero.
    for language in ("en", "de"):
        same = _effect(table, "random", language)
        for column in ("delta_accuracy", "delta_rouge"):
            assert same[column] == same[f"{column}_lo"] == same[f"{column}_hi"] == 0, (language, column)
    # m3 has only en-b: its change is against en-b's baseline (failed), not the language's mean.
    partial = _effect(table, "agnostic", "en")
    assert partial["n"] == 1 and np.isnan(partial["delta_accuracy_lo"])  # one sample: no interval
    assert partial["accuracy"] == 1.0
    assert partial["delta_accuracy"] == 1.0
    assert partial["delta_rouge"] == 1.0
    assert table[(table["head_set"] == "agnostic") & (table["language"] == "de")].empty


def test_effects_do_not_depend_on_the_order_of_rows():
    shuffled = _evaluations().sample(frac=1.0, random_state=3).reset_index(drop=True)
    original = effects(_evaluations(), _sets(), replicates=50, seed=1)
    again = effects(shuffled, _sets(), replicates=50, seed=1)
    pd.testing.assert_frame_equal(original, again)


# ---------------------------------------------------------------------------------------------------
# The distribution of scores.
# ---------------------------------------------------------------------------------------------------


def test_score_bin_boundaries():
    scores = pd.Series([0.0, 1e-9, 0.0999, 0.1, 0.4999, 0.5, 1.0, 1.7])
    assert score_bin(scores).tolist() == [
        BINS[0],
        BINS[1],
        BINS[1],
        BINS[2],
        BINS[2],
        BINS[3],
        BINS[3],
        BINS[3],
    ]


def _distribution_scores() -> pd.DataFrame:
    rows = [
        ("en", 0, 0, 0.0),
        ("en", 0, 1, 0.05),
        ("en", 1, 0, 0.3),
        ("en", 1, 1, 0.7),
        ("de", 0, 0, 0.0),
        ("de", 0, 1, 0.0),
        ("de", 1, 0, 0.6),
        ("de", 1, 1, 0.6),
    ]
    return pd.DataFrame(rows, columns=["language", "layer", "head", "score"])


def test_distribution_shares_per_language():
    shares = distribution(_distribution_scores())
    assert list(shares.columns) == list(BINS)
    assert shares.loc["en"].tolist() == [0.25, 0.25, 0.25, 0.25]
    assert shares.loc["de"].tolist() == [0.5, 0.0, 0.0, 0.5]


def test_top_heads_break_ties_by_address_and_share_counts_retrieval_heads():
    top = top_heads(_distribution_scores(), "de", count=3)
    assert list(zip(top["layer"], top["head"], strict=True)) == [(1, 0), (1, 1), (0, 0)]
    share = retrieval_head_share(_distribution_scores())
    assert share["en"] == 0.5
    assert share["de"] == 0.5


def test_a_language_without_successes_is_in_no_score_bin_and_has_no_head_count():
    from babelheads.analysis.language_heads import retrieval_overlap

    heads = [(layer, head) for layer in range(2) for head in range(2)]
    scores = pd.DataFrame(
        [
            {"language": code, "layer": layer, "head": head, "score": value}
            for code, values in (("en", [0.6, 0.2, 0.0, 0.05]), ("de", [np.nan] * 4))
            for (layer, head), value in zip(heads, values, strict=True)
        ]
    )
    assert score_bin(scores["score"]).isna().sum() == 4
    shares = distribution(scores)
    assert shares.loc["en"].tolist() == [0.25, 0.25, 0.25, 0.25]
    assert shares.loc["de"].isna().all()  # not "all heads strong", not "no heads"
    share = retrieval_head_share(scores)
    assert share["en"] == 0.5 and np.isnan(share["de"])

    importance = scores.assign(paper=1.0)[["language", "layer", "head", "paper"]]
    language_heads = pd.DataFrame(
        [
            {"language": code, "layer": 0, "head": 0, "role": "specific", "rank": 1, "score": 1.0}
            for code in ("en", "de")
        ]
    )
    table = retrieval_overlap(scores, language_heads, importance, 4, "paper", 0.1)
    de = table[table["language"] == "de"]
    assert len(de) == 3 and de["retrieval_heads"].isna().all() and de["overlap"].isna().all()
    assert table.loc[table["language"] == "any", "retrieval_heads"].tolist() == [2, 2, 2]  # en's only
