"""The procedures behind the claims' verdicts, each against a hand-computed or scipy reference:
Holm's correction, the intersection-union rule, the cluster bootstrap, the split-half null; and the
claims of the multilingual study on grids built so that each claim must, or must not, hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from babelheads.analysis.cell_grid import CellGrid
from babelheads.analysis.claims import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NO_DATA,
    Context,
    Measured,
    bootstrap_units,
    holm,
    judge,
    split_units,
)
from babelheads.analysis.multilingual_claims import multilingual_claims, shared_share


def _part(label: str, centre: float, spread: float = 0.1, n: int = 20, draws: int = 400) -> Measured:
    values = centre + spread * np.random.default_rng(abs(hash(label)) % 2**32).standard_normal(draws)
    return Measured(label, centre, values, n)


def test_holm_against_hand_computation():
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, kept monotone: 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == pytest.approx([0.5])
    assert holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # capped at 1 only above it
    adjusted = holm([np.nan, 0.02, 0.01])
    assert np.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.02])


def test_a_part_holds_fails_or_is_inconclusive_by_its_interval():
    assert _part("up", 1.0).verdict()[0] == HOLDS
    assert _part("down", -1.0).verdict()[0] == FAILS
    assert _part("flat", 0.0).verdict()[0] == INCONCLUSIVE
    assert Measured("none", np.nan, np.empty(0), 0, "no specific heads").verdict() == (
        NO_DATA,
        "no specific heads",
    )
    assert Measured("one", 1.0, np.ones(10), 1).verdict()[0] == NO_DATA


def test_undefined_replicates_are_counted_and_above_five_percent_make_it_inconclusive():
    draws = np.r_[np.full(90, 1.0), np.full(10, np.nan)]
    part = Measured("x", 1.0, draws, 30)
    assert part.undefined == pytest.approx(0.10)
    assert part.verdict() == (INCONCLUSIVE, "undefined in 10% of replicates")
    assert Measured("x", 1.0, np.r_[np.full(97, 1.0), np.full(3, np.nan)], 30).verdict()[0] == HOLDS


def test_an_interval_that_excludes_its_estimate_gives_no_verdict():
    part = Measured("max", 0.1, np.linspace(0.5, 1.0, 200), 30)
    verdict, reason = part.verdict()
    assert verdict == INCONCLUSIVE and "excludes its estimate" in reason


def test_intersection_union_holds_only_when_every_part_holds():
    assert judge([_part("en", 1.0), _part("de", 0.8)]).verdict == HOLDS
    judged = judge([_part("en", 1.0), _part("de", 0.0)])
    assert judged.verdict == INCONCLUSIVE and "de" in judged.reason
    assert (
        judge([_part("en", 1.0), Measured("de", np.nan, np.empty(0), 0, "no heads")]).verdict == INCONCLUSIVE
    )
    assert judge([Measured("de", np.nan, np.empty(0), 0, "no heads")]).verdict == NO_DATA


def test_a_contradiction_must_survive_holm():
    # p_against = share of draws >= 0 (+1): below 0.025 for one part alone, not after Holm over four
    alone = np.r_[np.full(395, -1.0), np.full(5, 0.5)]  # (1 + 5) / 401 = 0.015
    marginal = Measured("marginal", -1.0, alone, 30)
    assert marginal.verdict()[0] == FAILS and marginal.p_against == pytest.approx(6 / 401)
    assert judge([marginal]).verdict == FAILS
    others = [_part(code, 1.0) for code in ("a", "b", "c")]
    # Holm over four: 6/401 * 4 = 0.06 > 0.025: the interval is below 0, the family is not contradicted
    assert judge([marginal, *others]).verdict == INCONCLUSIVE
    strong = Measured("strong", -1.0, np.full(400, -1.0), 30)  # p = 1/401, x4 = 0.01
    judged = judge([strong, *others])
    assert judged.verdict == FAILS and "strong" in judged.reason


def test_the_cluster_bootstrap_draws_one_set_of_units_for_every_language():
    rng = np.random.default_rng(1)
    en, de = rng.normal(size=25), rng.normal(size=25) + 0.3

    def statistic(rows, _rng):
        return {"difference": float(np.mean(de[rows] - en[rows]))}

    point, draws = bootstrap_units(25, statistic, 999, 7)
    theirs = stats.bootstrap(
        (de - en,),
        np.mean,
        n_resamples=999,
        method="percentile",
        rng=np.random.default_rng(7),
        vectorized=True,
    )
    assert point["difference"] == pytest.approx(np.mean(de - en))
    lo, hi = np.percentile(draws["difference"], (2.5, 97.5))
    # the same resamples as scipy's paired bootstrap of the differences: the same interval
    assert (lo, hi) == pytest.approx(tuple(theirs.confidence_interval), abs=1e-12)


def test_the_split_null_never_puts_a_unit_in_two_groups_and_averages_partitions():
    seen = []

    def statistic(groups):
        seen.append([set(group.tolist()) for group in groups])
        return float(len(groups[0]) - len(groups[1]))

    estimate, draws = split_units(7, 2, statistic, 50, 0, partitions=10)
    assert estimate == pytest.approx(1.0) and (draws == 1.0).all()  # 7 units: groups of 4 and 3
    for groups in seen[:10]:  # the partitions of the estimate: disjoint, covering every unit
        assert not groups[0] & groups[1] and groups[0] | groups[1] == set(range(7))
    for groups in seen[10:]:  # a replicate resamples each group within itself
        first, second = (set(range(7)) - groups[1]), (set(range(7)) - groups[0])
        assert groups[0] <= first and groups[1] <= second
    assert np.isnan(split_units(1, 2, statistic, 5, 0)[0])


def _grid(scores: dict[str, np.ndarray], layers: np.ndarray | None = None) -> CellGrid:
    cells, heads = next(iter(scores.values())).shape
    layers = np.arange(heads) if layers is None else layers
    success = {code: np.ones(cells) for code in scores}
    return CellGrid(layers, np.zeros(heads, int), np.arange(cells).astype(str), scores, scores, success)


def _noisy(base: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """``cells`` samples whose per-head scores scatter around ``base`` (retrieval scores in [0, 1])."""
    rng = np.random.default_rng(seed)
    return np.clip(base + rng.normal(0, 0.15, (cells, len(base))), 0, 1)


def _claims(grid: CellGrid, languages: list[str]) -> dict[str, str]:
    rows = multilingual_claims(grid, languages, 0.1, 0.5, 200, 0, Context("toy", "toy"))
    return {row["claim"]: row["verdict"] for row, _ in rows}


def test_shared_share_is_nan_for_a_language_without_data_never_zero_heads():
    assert shared_share({"en": np.array([0.2, 0.0]), "de": np.array([np.nan, np.nan])}, 0.1) != 0
    assert np.isnan(shared_share({"en": np.array([0.2, 0.0]), "de": np.array([np.nan, np.nan])}, 0.1))
    assert shared_share({"en": np.array([0.2, 0.3, 0.0]), "de": np.array([0.2, 0.0, 0.0])}, 0.1) == 0.5


def test_languages_with_the_same_heads_do_not_make_the_sharing_claims_hold():
    """The copy control: three languages whose cells are the same samples (one language under three
    codes) share their heads by construction; no sharing claim may hold."""
    base = np.r_[0.8, 0.6, 0.3, 0.15, 0.12, np.zeros(27)]
    en = _noisy(base, 30, 0)
    verdicts = _claims(_grid({"en": en, "de": en.copy(), "zh": en.copy()}), ["en", "de", "zh"])
    for claim in (
        "multilingual.f1_partial_sharing",
        "multilingual.f2_strong_shared",
        "multilingual.f3_distance",
        "multilingual.f3_weak_ranks",
        "multilingual.f1_band",
    ):
        assert verdicts[claim] != HOLDS, claim


def test_languages_with_the_same_heads_but_their_own_samples_do_not_share_only_part():
    """Same heads, independent samples: heads near the threshold flip membership by noise, so the raw
    shared share falls below 1; against the exchange null Finding 1 must not hold."""
    base = np.r_[0.8, 0.6, 0.3, 0.15, 0.12, 0.09, 0.11, np.zeros(25)]
    grid = _grid({code: _noisy(base, 30, seed) for seed, code in enumerate(("en", "de", "zh"))})
    assert _claims(grid, ["en", "de", "zh"])["multilingual.f1_partial_sharing"] != HOLDS


def test_shared_mass_is_the_weighted_jaccard_of_the_scores():
    from babelheads.analysis.multilingual_claims import _shared_mass

    stacked = np.array([[0.8, 0.6, 0.7], [0.2, 0.0, 0.1], [0.0, 0.0, 0.0]])
    assert _shared_mass(stacked) == pytest.approx((0.6 + 0.0) / (0.8 + 0.2))
    assert np.isnan(_shared_mass(np.zeros((3, 2))))


def test_languages_with_different_heads_make_partial_sharing_hold():
    common = np.r_[0.8, 0.7, np.zeros(30)]
    own = {code: common.copy() for code in ("en", "de", "zh")}
    for offset, code in enumerate(own):  # three heads of each language's own, strong enough to be stable
        own[code][2 + 3 * offset : 5 + 3 * offset] = 0.5
    grid = _grid({code: _noisy(values, 30, seed) for seed, (code, values) in enumerate(own.items())})
    verdicts = _claims(grid, ["en", "de", "zh"])
    assert verdicts["multilingual.f1_partial_sharing"] == HOLDS


def test_the_distance_claim_can_hold_and_can_fail():
    base = np.r_[0.9, 0.7, 0.5, 0.3, 0.2, 0.15, np.zeros(10)]
    near = base.copy()
    far = base[::-1].copy()[np.r_[10:16, 0:10]]  # the same retrieval heads, reversed ranks
    far = np.r_[base[:6][::-1], np.zeros(10)]
    grid = {"en": _noisy(base, 30, 0), "de": _noisy(near, 30, 1), "zh": _noisy(far, 30, 2)}
    assert _claims(_grid(grid), ["en", "de", "zh"])["multilingual.f3_distance"] == HOLDS
    swapped = {"en": grid["en"], "de": grid["zh"], "zh": grid["de"]}
    assert _claims(_grid(swapped), ["en", "de", "zh"])["multilingual.f3_distance"] == FAILS


def test_a_claim_without_its_languages_has_no_data():
    base = np.r_[0.8, 0.2, np.zeros(10)]
    verdicts = _claims(_grid({"en": _noisy(base, 20, 0), "de": _noisy(base, 20, 1)}), ["en", "de"])
    assert verdicts["multilingual.f3_distance"] == NO_DATA
    assert verdicts["multilingual.f4_translation_fails"] == NO_DATA
    assert _claims(_grid({"en": _noisy(base, 20, 0)}), ["en"])["multilingual.f1_partial_sharing"] == NO_DATA


def test_the_layer_claim_holds_for_later_specific_heads_and_fails_for_earlier_ones():
    layers = np.arange(32) // 4  # 8 layers of 4 heads
    for specific, expected in (((28, 29, 30), HOLDS), ((4, 5, 6), FAILS)):
        scores = {}
        for seed, (code, head) in enumerate(zip(("en", "de", "zh"), specific, strict=True)):
            base = np.zeros(32)
            base[[12, 13]] = 0.8  # shared heads in layer 3
            base[head] = 0.6
            scores[code] = _noisy(base, 30, seed)
        verdicts = _claims(_grid(scores, layers), ["en", "de", "zh"])
        assert verdicts["multilingual.f1_specific_later"] == expected, specific


def _ablation_rows(rouge: dict[str, dict[str, float]], prompts: int = 6) -> pd.DataFrame:
    """language -> mask -> ROUGE of every prompt (the agnostic mask alternates 0 / 0.1)."""
    rows = []
    for language, masks in rouge.items():
        for sample in range(prompts):
            for mask, value in masks.items():
                value = 0.1 * (sample % 2) if value < 0 else value
                rows.append(
                    {
                        "language": language,
                        "sample_id": f"{language}{sample}",
                        "mask_id": mask,
                        "rouge1_recall": value,
                        "success": value > 0.5,
                    }
                )
    return pd.DataFrame(rows)


def _f5(samples: pd.DataFrame, sets: pd.DataFrame) -> tuple[dict, dict[str, dict], list]:
    from babelheads.analysis.ablation_claims import ablation_claims

    rows = ablation_claims(samples, sets, "niah", 200, 0, Context("toy", "toy"))
    row, parts = next(
        (row, parts) for row, parts in rows if row["claim"] == "multilingual.f5_agnostic_hurts_more"
    )
    return row, {part["part"].split()[0]: part for part in parts}, rows


def test_finding_5_compares_each_languages_own_specific_heads_at_equal_counts():
    # per language: its specific heads against as many of its strongest agnostic heads
    sets = pd.DataFrame(
        [
            ("none", 0, 0, "baseline", ""),
            ("agnostic", 4, 4, "a4", ""),
            ("specific", 4, 4, "en4", "en"),
            ("agnostic-equal", 4, 4, "a4", "en"),
            ("specific", 4, 0, "baseline", "de"),
            ("agnostic-equal", 4, 0, "baseline", "de"),
        ],
        columns=["name", "k", "count", "mask_id", "language"],
    ).assign(seed=-1)
    samples = _ablation_rows(
        {
            "en": {"baseline": 1.0, "a4": -1, "en4": 1.0},
            "de": {"baseline": 1.0, "a4": 0.1, "de4": 0.0, "d3": 0.1},
        }
    )
    row, by_part, rows = _f5(samples, sets)
    # en: specific masked keeps ROUGE 1, agnostic 0.05 on average
    assert by_part["en"]["estimate"] == pytest.approx(0.95) and by_part["en"]["verdict"] == HOLDS
    assert "K=4: 4 specific, 4 agnostic-equal" in by_part["en"]["part"]
    # de: no specific heads, so nothing to compare; the claim over every language is not shown
    assert by_part["de"]["verdict"] == NO_DATA
    assert by_part["de"]["reason"] == "no specific heads of this language"
    assert row["verdict"] == INCONCLUSIVE
    matched = next(row for row, _ in rows if row["claim"] == "multilingual.f5_matched")
    assert matched["verdict"] == NO_DATA  # no matched sets in this run

    # de with 3 specific heads against its 3 strongest agnostic ones: specific hurts more, so the
    # part contradicts and, after Holm over the two languages, the claim does not hold
    three = pd.concat(
        [
            sets[sets["language"] != "de"],
            pd.DataFrame(
                [("specific", 4, 3, "de4", "de"), ("agnostic-equal", 4, 3, "d3", "de")],
                columns=["name", "k", "count", "mask_id", "language"],
            ).assign(seed=-1),
        ]
    )
    row, by_part, _ = _f5(samples, three)
    assert by_part["de"]["estimate"] == pytest.approx(-0.1) and by_part["de"]["verdict"] == FAILS
    assert row["verdict"] == FAILS

    # a head-set table whose counts differ (never written by select_head_sets) gives no data, counts said
    unequal = three.assign(count=[0, 4, 4, 4, 3, 2])
    _, by_part, _ = _f5(samples, unequal)
    assert by_part["de"]["reason"] == "never as many specific as agnostic-equal heads (K=4: 3 vs 2)"


def _top_and_random(draws: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["none", "top", *["random"] * draws],
            "k": [0, 2, *[2] * draws],
            "seed": [-1, -1, *range(draws)],
            "count": [0, 2, *[2] * draws],
            "mask_id": ["baseline", "t", *[f"r{draw}" for draw in range(draws)]],
            "language": "",
        }
    )


def test_top_against_random_heads_compares_with_the_spread_of_the_random_sets():
    from babelheads.analysis.ablation_claims import ablation_claims

    def claim(outcomes: dict[str, float], draws: int, replicates: int = 300) -> dict:
        samples = _ablation_rows({"en": {"baseline": 1.0, **outcomes}})
        rows = ablation_claims(samples, _top_and_random(draws), "niah", replicates, 0, Context("t", "t"))
        return next(row for row, _ in rows if row["claim"] == "wu.mask_top_vs_random")

    # random draws that agree (every one keeps every answer) against a top set that loses them: holds
    agreeing = claim({"t": 0.0, **{f"r{draw}": 1.0 for draw in range(4)}}, 4)
    assert agreeing["estimate"] == pytest.approx(1.0) and agreeing["verdict"] == HOLDS
    # two random sets that disagree (1 and 0): the top set (0) is within their spread, whatever the
    # prompts say: one more random set could do as badly
    split = claim({"t": 0.0, "r0": 1.0, "r1": 0.0}, 2)
    assert split["estimate"] == pytest.approx(0.5) and split["verdict"] == INCONCLUSIVE
    # one random set: its spread is unknown
    single = claim({"t": 0.0, "r0": 1.0}, 1)
    assert single["verdict"] == NO_DATA and "spread of random sets is unknown" in single["reason"]
    dead = claim({"t": 0.0, "r0": 0.0, "r1": 0.0}, 2, 50)
    dead_rows = _ablation_rows({"en": {"baseline": 0.0, "t": 0.0, "r0": 0.0, "r1": 0.0}})
    rows = ablation_claims(dead_rows, _top_and_random(2), "niah", 50, 0, Context("t", "t"))
    dead = next(row for row, _ in rows if row["claim"] == "wu.mask_top_vs_random")
    assert dead["verdict"] == NO_DATA and "baseline accuracy 0" in dead["reason"]


def test_a_random_set_taken_for_the_top_set_rarely_holds():
    """The null the prediction interval is for: the 'top' set is one more random set. Across many
    simulated ablations (set effects drawn at random, prompts noisy) it may hold at most a few times in
    a hundred; a bootstrap of the random sets' mean alone holds about one time in four."""
    from babelheads.analysis.claims import against_random

    rng = np.random.default_rng(0)
    holds = 0
    for run in range(100):
        effects = rng.normal(0.6, 0.15, 4)  # four sets: the first plays 'top'
        outcomes = np.clip(effects[None, :] + rng.normal(0, 0.1, (12, 4)), 0, 1)
        part = against_random("x", -outcomes[:, 0], -outcomes[:, 1:], 200, run)
        holds += part.verdict()[0] == HOLDS
    assert holds <= 7


ONE_TOP_TWO_RANDOM = pd.DataFrame(
    {
        "name": ["none", "top", "random", "random"],
        "k": [0, 1, 1, 1],
        "seed": [-1, -1, 0, 1],
        "count": [0, 1, 1, 1],
        "mask_id": ["baseline", "t", "r", "q"],
        "language": "",
    }
)
"""Head sets of an ablation with one top head (mask 't') and two random draws ('r', 'q')."""


def test_the_cot_contrast_is_a_difference_of_differences_paired_by_problem():
    from babelheads.analysis.ablation_claims import ablation_claims

    sets = ONE_TOP_TWO_RANDOM
    rows = []
    for problem in range(8):
        # CoT: top breaks every problem, random none; direct: neither changes anything
        for mode, outcome in (
            ("cot", {"baseline": 1, "t": 0, "r": 1, "q": 1}),
            ("direct", {"baseline": 1, "t": 1, "r": 1, "q": 1}),
        ):
            for mask, success in outcome.items():
                rows.append(
                    {
                        "language": f"en/{mode}",
                        "source_language": "en",
                        "problem_id": problem,
                        "mode": mode,
                        "mask_id": mask,
                        "sample_id": f"en-{mode}-{problem}",
                        "success": bool(success),
                    }
                )
    claims = {
        row["claim"]: row
        for row, _ in ablation_claims(pd.DataFrame(rows), sets, "cot", 200, 0, Context("t", "t"))
    }
    assert (
        claims["wu.cot_top_vs_random"]["estimate"] == 1.0
        and claims["wu.cot_top_vs_random"]["verdict"] == HOLDS
    )
    assert claims["wu.cot_vs_direct"]["estimate"] == 1.0 and claims["wu.cot_vs_direct"]["verdict"] == HOLDS
    assert claims["wu.cot_vs_direct"]["n"] == 8


def test_languages_pooled_are_resampled_by_grid_cell_not_counted_as_more_prompts():
    from babelheads.analysis.ablation_claims import ablation_claims

    sets = ONE_TOP_TWO_RANDOM
    rows = []
    for code in ("en", "de", "zh"):  # the same outcome in every language: one grid, three copies
        for cell in range(6):
            for mask, success in (("baseline", 1.0), ("t", float(cell % 2)), ("r", 1.0), ("q", 1.0)):
                rows.append(
                    {
                        "language": code,
                        "sample_id": f"{code}-{cell}",
                        "length": 800,
                        "depth": 0.5,
                        "needle_id": f"n{cell}",
                        "mask_id": mask,
                        "success": success,
                    }
                )
    claims = {
        row["claim"]: row
        for row, _ in ablation_claims(pd.DataFrame(rows), sets, "niah", 200, 0, Context("t", "t"))
    }
    pooled, each = claims["wu.mask_top_vs_random"], claims["wu.mask_top_vs_random_each"]
    assert pooled["n"] == 6 and pooled["estimate"] == pytest.approx(0.5)
    # pooling identical copies adds no information: the same interval as one language alone
    assert (pooled["lo"], pooled["hi"]) == pytest.approx((each["lo"], each["hi"]))
