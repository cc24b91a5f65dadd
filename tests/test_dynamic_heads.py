"""Per-step heads, their statistics and the probes, against hand-computed cases, scipy and planted signals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from babelheads.analysis.aggregate import ThinDataWarning
from babelheads.analysis.dynamic_heads import (
    dynamism,
    entropy,
    jaccard,
    sample_parts,
    step_heads,
    weighted_statistics,
)
from babelheads.analysis.head_probes import (
    ProbeSettings,
    StepData,
    asymmetric_loss,
    canonical_correlation,
    cca_sweep,
    f1_threshold,
    probe_heads,
    regress_heads,
    split_samples,
)
from babelheads.experiments.dynamic import eq2_scores

HEADS = 4  # one layer of four heads: flat index = head
SETS = {("A", 0): {0, 1}, ("A", 1): {1}, ("A", 2): set(), ("A", 3): {2}, ("B", 0): {0}, ("B", 1): {0}}


def _events(sets=SETS) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [
        {"sample_id": sample, "step": step, "layer": 0, "head": head, "needle_copy": head in heads}
        for (sample, step), heads in sets.items()
        for head in range(HEADS)
    ]
    samples = pd.DataFrame({"sample_id": ["A", "B"], "language": ["en", "en"]})
    return pd.DataFrame(rows).sample(frac=1, random_state=0), samples  # shuffled: order must not matter


def test_table_one_statistics_equal_a_hand_computed_case():
    events, samples = _events()
    steps = step_heads(events, samples)
    table = dynamism(steps, np.array([0, 1]), replicates=200, seed=0).set_index("statistic")
    # Retrieval steps: A0 {0,1}, A1 {1}, A3 {2}, B0 {0}, B1 {0}; static {0, 1}.
    assert table.loc["jaccard_static", "value"] == pytest.approx((1 + 0.5 + 0 + 0.5 + 0.5) / 5)
    # Adjacent retrieval steps: (A0, A1) 1/2 and (B0, B1) 1; A2 is no retrieval step.
    assert table.loc["jaccard_adjacent", "value"] == pytest.approx(0.75)
    assert table.loc["entropy", "value"] == pytest.approx(scipy.stats.entropy([3, 2, 1]))
    assert table.loc["entropy", "reference"] == pytest.approx(np.log(2))
    assert table.loc["mean_set_size", "value"] == pytest.approx(6 / 5)
    assert (table["n"] == 2).all() and (table["retrieval_steps"] == 5).all()
    for name in ("jaccard_static", "jaccard_adjacent", "entropy"):
        assert table.loc[name, "lo"] <= table.loc[name, "value"] <= table.loc[name, "hi"]


def test_a_bootstrap_draw_is_the_statistic_of_the_drawn_samples():
    events, samples = _events()
    order, parts = sample_parts(step_heads(events, samples), np.array([0, 1]))
    only_a = weighted_statistics(parts, np.array([[2.0, 0.0]] if order == ["A", "B"] else [[0.0, 2.0]]))
    assert only_a["jaccard_static"][0] == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert only_a["jaccard_adjacent"][0] == pytest.approx(0.5)
    assert only_a["entropy"][0] == pytest.approx(scipy.stats.entropy([1, 2, 1]))


def test_jaccard_and_entropy_edge_cases():
    a = np.array([[True, False], [False, False]])
    b = np.array([[True, True], [False, False]])
    np.testing.assert_allclose(jaccard(a, b), [0.5, np.nan])
    assert np.isnan(entropy(np.zeros(3)))
    assert entropy(np.array([5, 0, 0])) == 0.0


def test_too_few_samples_give_no_interval_and_a_warning():
    events, samples = _events({("A", 0): {0}, ("A", 1): {0, 1}})
    with pytest.warns(ThinDataWarning):
        table = dynamism(step_heads(events, samples.iloc[:1]), np.array([0]), replicates=50)
    assert table["lo"].isna().all() and table["value"].notna().all()


def test_runs_without_per_step_scores_are_refused_with_the_fix():
    events, samples = _events()
    with pytest.raises(ValueError, match="--span answer"):
        step_heads(events.drop(columns="needle_copy"), samples)


def test_samples_split_whole_and_by_share():
    ids = [f"s{index}" for index in range(20)]
    parts = split_samples(ids, (0.7, 0.2, 0.1), seed=3)
    assert parts == split_samples(list(reversed(ids)), (0.7, 0.2, 0.1), seed=3)
    counts = pd.Series(parts).value_counts()
    assert (counts["train"], counts["validation"], counts["test"]) == (14, 4, 2)


def _step_data(states, targets, samples, steps, seed=0):
    index = pd.DataFrame(
        {
            "sample_id": [f"s{i // steps}" for i in range(samples * steps)],
            "step": list(range(steps)) * samples,
        }
    )
    parts = split_samples(sorted(set(index["sample_id"])), (0.7, 0.2, 0.1), seed)
    return StepData(index, states.astype(np.float32), targets, parts)


def test_cca_finds_a_planted_lagged_relation_and_its_baselines_do_not():
    rng = np.random.default_rng(0)
    samples, steps = 40, 12
    states = rng.normal(size=(samples * steps, 10))
    targets = rng.random((samples * steps, 6))
    # Head 0's score at step n + 1 is a function of the state at step n.
    for row in range(samples * steps):
        if row % steps:
            targets[row, 0] = 1 / (1 + np.exp(-3 * states[row - 1, 0]))
    data = _step_data(states, targets, samples, steps)
    table = cca_sweep(data, ProbeSettings(cca_lags=(0, 1), shuffles=2)).set_index("lag")
    assert table.loc[1, "held_out"] > 0.8
    assert table.loc[0, "held_out"] < 0.5
    assert abs(table.loc[1, "shuffled_held_out"]) < 0.4


def test_cca_on_noise_with_few_pairs_looks_perfect_in_training_only():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(24, 80)), rng.random((24, 40))
    held_x, held_y = rng.normal(size=(50, 80)), rng.random((50, 40))
    train, held, _ = canonical_correlation(x, y, held_x, held_y, ProbeSettings())
    assert train > 0.9 and abs(held) < 0.5
    data = _step_data(np.concatenate([x, held_x])[:60], np.concatenate([y, held_y])[:60], 6, 10)
    with pytest.warns(ThinDataWarning, match="shuffled pairs"):
        cca_sweep(data, ProbeSettings(cca_lags=(0,), shuffles=1))


def test_asymmetric_loss_without_focusing_is_binary_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.3], [-0.5, 0.1, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
    )
    assert asymmetric_loss(logits, targets, 0.0, 0.0, 0.0) == pytest.approx(float(expected), rel=1e-5)
    # Focusing only ever lowers a negative's loss.
    assert asymmetric_loss(logits, targets, 0.0, 4.0, 0.05) < expected


def test_the_f1_threshold_is_the_best_of_every_cut():
    rng = np.random.default_rng(2)
    labels, scores = rng.random(200) < 0.3, rng.random(200)
    best = max(
        (2 * (labels & (scores >= cut)).sum() / (labels.sum() + (scores >= cut).sum()), cut)
        for cut in np.unique(scores)
    )
    threshold = f1_threshold(labels, scores)
    f1 = 2 * (labels & (scores >= threshold)).sum() / (labels.sum() + (scores >= threshold).sum())
    assert f1 == pytest.approx(best[0])


def test_the_probe_beats_the_static_prior_and_shuffled_labels_on_a_planted_signal(tmp_path):
    rng = np.random.default_rng(3)
    samples, steps = 60, 10
    states = rng.normal(size=(samples * steps, 12))
    labels = np.zeros((samples * steps, 6), np.float32)
    labels[:, :3] = states[:, :3] > 0.3
    settings = ProbeSettings(hidden=(32,), epochs=40, batch_size=64, learning_rate=1e-3, replicates=100)
    data = _step_data(states, labels, samples, steps)
    scores, curves, trained, gains = probe_heads(data, settings)
    scores = scores.set_index("predictor")
    assert scores.loc["probe", "f1"] > scores.loc["static prior", "f1"] + 0.2
    assert scores.loc["probe", "f1"] > scores.loc["shuffled labels", "f1"] + 0.2
    assert scores.loc["probe", "auprc"] > 0.8
    # Intervals resample whole test samples; the gain over the prior is paired on the same draws.
    assert scores.loc["probe", "f1_lo"] <= scores.loc["probe", "f1"] <= scores.loc["probe", "f1_hi"]
    assert scores.loc["probe", "auprc_gain_lo"] > 0
    assert scores.loc["static prior", "auprc_gain"] == 0
    assert set(curves["predictor"]) == {"probe", "static prior", "shuffled labels", "prior x P(retrieve)"}
    # the states say which heads, not only when: the probe beats the prior within retrieval steps and
    # the prior times the predicted chance of retrieving; each gain equals the table's difference
    within = gains["static prior | retrieval steps"]
    assert within.estimate == pytest.approx(
        scores.loc["probe | retrieval steps", "auprc"] - scores.loc["static prior | retrieval steps", "auprc"]
    )
    assert np.nanpercentile(within.draws, 2.5) > 0
    timing = gains["prior x P(retrieve)"]
    assert timing.estimate == pytest.approx(
        scores.loc["probe", "auprc"] - scores.loc["prior x P(retrieve)", "auprc"]
    )
    assert np.nanpercentile(timing.draws, 2.5) > 0
    # The fitted probe, saved and loaded, gives the test AUPRC the table reports.
    from sklearn.metrics import average_precision_score

    from babelheads.analysis.head_probes import TrainedProbe

    path = tmp_path / "probe.pt"
    trained.save(path)
    loaded = TrainedProbe.load(path)
    test = data.part("test")
    probabilities = loaded.probabilities(states[test])
    np.testing.assert_allclose(probabilities, trained.probabilities(states[test]), rtol=1e-6)
    auprc = average_precision_score(labels[test].astype(bool).ravel(), probabilities.ravel())
    assert auprc == pytest.approx(scores.loc["probe", "auprc"], abs=1e-6)
    assert loaded.threshold == scores.loc["probe", "threshold"]


def test_the_regressor_explains_a_planted_score_and_its_baselines_do_not():
    rng = np.random.default_rng(4)
    samples, steps = 50, 10
    states = rng.normal(size=(samples * steps, 8))
    targets = np.column_stack(
        [np.tanh(states[:, 0]), 0.5 * states[:, 1] ** 2, np.full(samples * steps, np.nan)]
    )
    table = regress_heads(
        _step_data(states, targets, samples, steps),
        ProbeSettings(hidden=(32,), epochs=60, batch_size=64, learning_rate=1e-3, replicates=100),
    )
    table = table.set_index("predictor")
    assert table.loc["regressor", "r2"] > 0.7 and (table["heads"] == 2).all()
    assert table.loc["shuffled targets", "r2"] < 0.2 and table.loc["training mean", "r2"] <= 0.05
    assert table.loc["regressor", "r2_lo"] > table.loc["shuffled targets", "r2_hi"]


def test_eq2_is_support_over_context_and_nan_where_a_head_sees_no_context():
    events = pd.DataFrame(
        {
            "sample_id": ["A"] * 2,
            "step": [0, 0],
            "layer": [0, 0],
            "head": [0, 1],
            "needle_copy": [True, False],
            "mass_support": [0.2, 0.0],
            "mass_context": [0.6, 0.0],
        }
    )
    steps = step_heads(events, pd.DataFrame({"sample_id": ["A"], "language": ["en"]}))
    scores = eq2_scores(events, steps)
    assert scores[0, 0] == pytest.approx(0.25) and np.isnan(scores[0, 1])


def test_nothing_warns_on_a_clean_case():
    events, samples = _events()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dynamism(step_heads(events, samples), np.array([0, 1]), replicates=50)


def test_the_first_canonical_pair_does_not_depend_on_how_many_components_are_fitted():
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 12)), rng.normal(size=(300, 8))
    y[:, 0] += x[:, 0]
    first = [
        np.corrcoef(*(part[:, 0] for part in CCA(n_components=n, max_iter=1000).fit(x, y).transform(x, y)))[
            0, 1
        ]
        for n in (1, 8)
    ]
    assert first[0] == pytest.approx(first[1], abs=1e-6)


def test_a_probe_that_only_knows_when_the_model_retrieves_does_not_beat_the_timing_baseline():
    """The state says *when* a step retrieves (column 0) but not *which* head (drawn at random): the
    probe's gain over the static prior comes from timing, so within retrieval steps and against
    prior x P(retrieve) it must not show."""
    rng = np.random.default_rng(4)
    samples, steps = 60, 10
    states = rng.normal(size=(samples * steps, 12))
    labels = np.zeros((samples * steps, 6), np.float32)
    retrieves = states[:, 0] > 0.3
    labels[np.flatnonzero(retrieves), rng.integers(0, 3, retrieves.sum())] = 1
    settings = ProbeSettings(hidden=(32,), epochs=40, batch_size=64, learning_rate=1e-3, replicates=100)
    scores, _, _, gains = probe_heads(_step_data(states, labels, samples, steps), settings)
    scores = scores.set_index("predictor")
    assert scores.loc["probe", "auprc_gain_lo"] > 0  # timing alone beats the constant prior
    for baseline in ("static prior | retrieval steps", "prior x P(retrieve)"):
        assert not np.nanpercentile(gains[baseline].draws, 2.5) > 0, baseline


def test_heads_that_take_turns_make_the_dynamic_claims_hold_and_one_fixed_head_does_not():
    from babelheads.analysis.claims import HOLDS, Context
    from babelheads.analysis.dynamic_claims import statistic_claims
    from babelheads.analysis.dynamic_heads import StepHeads

    samples, steps, heads = 10, 8, 4

    def claims(active_head) -> dict[str, dict]:
        index = pd.DataFrame(
            [(f"s{sample}", step, "en") for sample in range(samples) for step in range(steps)],
            columns=["sample_id", "step", "language"],
        )
        matrix = np.zeros((len(index), heads), dtype=bool)
        matrix[np.arange(len(index)), [active_head(step) for step in index["step"]]] = True
        tested = {"en": StepHeads(index, matrix, heads, "needle_copy")}
        rows = statistic_claims(tested, {"en": np.array([0])}, 200, 0, Context("toy", "toy"))
        return {row["claim"]: row for row, _ in rows}

    turns = claims(lambda step: step % heads)  # four heads in turn, the static top-1 is one of them
    assert turns["dynamic.not_static"]["estimate"] == pytest.approx(0.75)
    assert turns["dynamic.turn_taking"]["estimate"] == pytest.approx(np.log(4))
    assert {row["verdict"] for row in turns.values()} == {HOLDS}
    fixed = claims(lambda step: 0)
    assert fixed["dynamic.not_static"]["estimate"] == 0 and fixed["dynamic.not_static"]["verdict"] != HOLDS
    assert fixed["dynamic.turn_taking"]["verdict"] != HOLDS


def test_a_probe_gain_on_too_few_test_samples_gives_no_verdict():
    from babelheads.analysis.claims import HOLDS, NO_DATA, Context
    from babelheads.analysis.dynamic_claims import MIN_TEST_SAMPLES, probe_claims
    from babelheads.analysis.head_probes import ProbeGain

    def verdict(samples: int) -> dict:
        gain = ProbeGain(0.3, np.full(200, 0.3), samples)
        rows = probe_claims({"all": gain}, {"all": {"prior x P(retrieve)": gain}}, Context("t", "t"))
        return {row["claim"]: row for row, _ in rows}

    few = verdict(MIN_TEST_SAMPLES - 1)
    assert (
        few["dynamic.predictable"]["verdict"] == NO_DATA and "too few" in few["dynamic.predictable"]["reason"]
    )
    assert verdict(MIN_TEST_SAMPLES)["dynamic.cca"]["verdict"] == HOLDS
