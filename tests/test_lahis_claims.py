"""The LAHIS claims on toy frames: each can hold and can fail, a random set taken for the chosen one
rarely holds (the comparison is with the spread of random sets, not their mean), modes that were not
run say so, and shared specific heads are left out of the cross matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from babelheads.analysis import lahis_claims as lahis
from babelheads.analysis.claims import FAILS, HOLDS, INCONCLUSIVE, NO_DATA, Context, claim_rows, judge
from babelheads.analysis.language_heads import exclusive_heads

CONTEXT = Context("toy", "runs/toy")
REPLICATES = 400


def _frame(
    effects: dict[str, float],
    value: str,
    units: int = 12,
    language: str = "xx",
    noise: float = 0.01,
    seed: int = 0,
    base: tuple[float, float] = (3.0, 0.3),
) -> pd.DataFrame:
    """One row per (unit, condition): value = the unit's base (mean, sd) + the condition's effect +
    noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(*base, units)
    return pd.DataFrame(
        [
            {
                "language": language,
                "unit": f"{language}{unit}",
                "condition": condition,
                value: base[unit] + effect + rng.normal(0, noise),
            }
            for condition, effect in effects.items()
            for unit in range(units)
        ]
    )


def _randoms(prefix: str, effects: list[float]) -> dict[str, float]:
    return {f"{prefix}{seed}": effect for seed, effect in enumerate(effects)}


def _verdict(parts: list) -> str:
    return judge(parts).verdict


def test_the_chosen_set_is_compared_with_the_spread_of_random_sets():
    rng = np.random.default_rng(1)
    units = 12
    base = rng.normal(3, 0.3, units)[:, None]
    harmless = base + rng.normal(0, 0.01, (units, 3)) + np.array([0.0, 0.02, -0.01])
    far = lahis.against_random("far", base[:, 0] + 0.5, harmless, REPLICATES, 0)
    assert far.verdict()[0] == HOLDS and far.estimate == pytest.approx(0.5, abs=0.02)
    below = lahis.against_random("below", base[:, 0] - 0.5, harmless, REPLICATES, 0)
    assert below.verdict()[0] == FAILS
    # A chosen set inside the random sets' spread: however many texts, no verdict.
    spread = base + np.array([0.0, 0.3, -0.3])
    inside = lahis.against_random("inside", base[:, 0] + 0.2, spread, REPLICATES, 0)
    assert inside.verdict() == (INCONCLUSIVE, "the interval contains 0")
    one = lahis.against_random("one", base[:, 0] + 0.5, harmless[:, :1], REPLICATES, 0)
    assert one.verdict()[0] == NO_DATA and "spread of random sets is unknown" in one.reason


def test_a_random_set_taken_for_the_chosen_one_rarely_holds():
    """Under the null (the chosen set is one more random draw) the chosen set holds at about the
    one-sided 2.5 % rate; resampling the draws around their mean would make it hold ~1 time in 4."""
    rng = np.random.default_rng(7)
    trials, holds = 150, 0
    for trial in range(trials):
        sets = 1 + 3
        base = rng.normal(3, 0.3, (12, 1))
        values = base + rng.normal(0, 0.1, sets) + rng.normal(0, 0.01, (12, sets))
        part = lahis.against_random("null", values[:, 0], values[:, 1:], 200, trial)
        holds += part.verdict()[0] == HOLDS
    assert holds / trials <= 0.07


def test_ppl_specific_holds_in_every_language_or_fails():
    def frame(effect: float) -> pd.DataFrame:
        return pd.concat(
            [
                _frame(
                    {
                        "none": 0,
                        f"specific:{code}": effect,
                        **_randoms(f"random-specific:{code}:", [0.01, 0.0, 0.02]),
                    },
                    "log_ppl",
                    language=code,
                    seed=index,
                )
                for index, code in enumerate(("de", "en"))
            ]
        )

    assert _verdict(lahis.ppl_specific(frame(0.6), REPLICATES, 0)) == HOLDS
    assert _verdict(lahis.ppl_specific(frame(-0.6), REPLICATES, 0)) == FAILS
    assert [part.label for part in lahis.ppl_specific(frame(0.6), REPLICATES, 0)] == ["de", "en"]


def _cross(rise: dict[tuple[str, str], float]) -> pd.DataFrame:
    codes = ("de", "en", "zh")
    return pd.concat(
        [
            _frame(
                {"none": 0, **{f"exclusive:{mask}": rise.get((test, mask), 0.05) for mask in codes}},
                "log_ppl",
                language=test,
                seed=index,
            )
            for index, test in enumerate(codes)
        ]
    )


def test_ppl_cross_diagonal_holds_on_a_diagonal_and_fails_on_an_anti_diagonal():
    diagonal = _cross({(code, code): 0.5 for code in ("de", "en", "zh")})
    assert _verdict(lahis.ppl_cross(diagonal, REPLICATES, 0)) == HOLDS
    anti = _cross({(code, code): -0.3 for code in ("de", "en", "zh")})
    assert _verdict(lahis.ppl_cross(anti, REPLICATES, 0)) == FAILS
    flat = lahis.ppl_cross(_cross({}), REPLICATES, 0)
    assert _verdict(flat) != HOLDS
    # A language without exclusive heads has no row of its own: no data for it, never a zero.
    partial = diagonal[diagonal["condition"] != "exclusive:zh"]
    parts = {part.label: part for part in lahis.ppl_cross(partial, REPLICATES, 0)}
    assert parts["zh"].verdict()[0] == NO_DATA and "exclusive" in parts["zh"].reason
    assert parts["de"].verdict()[0] == HOLDS


def test_general_all_per_language_and_measure():
    def measures(ppl: float, accuracy: float, baseline: float = 0.8) -> dict:
        texts = _frame(
            {"none": 0, "general": ppl, **_randoms("random-general:general:", [0.0, 0.01, 0.02])}, "log_ppl"
        )
        qa = _frame(
            {
                "none": baseline,
                "general": accuracy,
                **_randoms("random-general:general:", [baseline, baseline - 0.01, baseline]),
            },
            "correct",
            noise=0.0,
            base=(0.0, 0.0),
        )
        return {"log-ppl": (texts, "log_ppl", 1.0), "QA": (qa, "correct", -1.0)}

    assert _verdict(lahis.general_all(measures(0.5, 0.2), REPLICATES, 0)) == HOLDS
    parts = lahis.general_all(measures(-0.5, 0.8), REPLICATES, 0)
    assert [part.label for part in parts] == ["xx (log-ppl)", "xx (QA)"]
    assert _verdict(parts) == FAILS
    nothing_to_lower = lahis.general_all(measures(0.5, 0.0, baseline=0.0), REPLICATES, 0)
    assert nothing_to_lower[1].reason == "baseline accuracy 0: nothing to lower"
    assert _verdict(nothing_to_lower) == INCONCLUSIVE  # every language and measure must hold


def test_off_target_attention_transfer_and_adaptation_can_hold_and_fail():
    def shares(effect: float, value: str, chosen: str, prefix: str, none: float = 0.3) -> pd.DataFrame:
        effects = {"none": none, chosen: none + effect, **_randoms(prefix, [none, none + 0.01, none])}
        return _frame(effects, value, noise=0.0 if none == 1 else 0.01, base=(0.0, 0.0))

    for effect, verdict in ((0.5, HOLDS), (-0.25, FAILS)):
        off = shares(effect, "on_target", "specific:en", "random-specific:en:")
        assert _verdict(lahis.off_target(off, REPLICATES, 0)) == verdict
        transfer = shares(effect, "follows_first", "amplify", "random-amplify:")
        assert _verdict(lahis.attn_transfer(transfer, REPLICATES, 0)) == verdict
        answers = shares(effect, "correct", "adapted", "random-adapted:")
        assert _verdict(lahis.adapt_gain(answers, "de", REPLICATES, 0)) == verdict
    full = shares(0.0, "on_target", "specific:en", "random-specific:en:", none=1.0)
    assert "already 1" in lahis.off_target(full, REPLICATES, 0)[0].reason


def test_a_run_writes_the_claim_its_mode_tests():
    texts = _frame(
        {"none": 0, "specific:xx": 0.6, **_randoms("random-specific:xx:", [0.0, 0.01, 0.02])}, "log_ppl"
    )
    rows = lahis.language_test_claims(
        "ppl", lahis.ppl_specific(texts, REPLICATES, 0), "a test", "texts", CONTEXT, control=True
    )
    assert [row["claim"] for row, _ in rows] == ["lahis.ppl_specific"]
    assert rows[0][0]["verdict"] == HOLDS and "NEGATIVE CONTROL" in rows[0][0]["test"]
    assert lahis.language_test_claims("retrieval", [], "a test", "texts", CONTEXT) == []


def test_claim_rows_carry_the_test_and_the_unit():
    answers = _frame(
        {"none": 0.3, "adapted": 0.8, **_randoms("random-adapted:", [0.3, 0.31, 0.3])},
        "correct",
        base=(0.0, 0.0),
    )
    unit = lahis.against_random_unit("held-out questions", lahis.random_sets(answers, "random-adapted:"))
    row, parts = claim_rows(lahis.ADAPT_GAIN, lahis.adapt_gain(answers, "de", 200, 0), unit, "t", CONTEXT)
    assert "3 random sets" in row["unit"] and "2 df" in row["unit"]
    assert row["lo"] <= row["estimate"] <= row["hi"] and row["n"] == 12 and parts[0]["part"] == "de"


def test_a_head_specific_to_two_languages_belongs_to_neither():
    exclusive, left_out = exclusive_heads({"es": [(9, 1), (3, 0)], "fr": [(9, 1), (2, 2)], "en": [(4, 4)]})
    assert exclusive == {"es": [(3, 0)], "fr": [(2, 2)], "en": [(4, 4)]}
    assert left_out == {"es": [(9, 1)], "fr": [(9, 1)], "en": []}
