"""The claims of a compress run from hand-made rows: each can hold and can fail; random draws equal to
the head-split set are left out and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from babelheads.analysis.claims import FAILS, HOLDS, NO_DATA, Context
from babelheads.analysis.compression import compress_contrasts, compress_scores
from babelheads.analysis.kv_claims import MARGIN, kv_claims


def _rows(accuracy: dict[str, list[float]], samples: int = 8, equal_seed: int | None = None) -> pd.DataFrame:
    """policy -> success per sample (random-heads: one list per draw, cycled over the draws)."""
    rows = []
    for sample in range(samples):
        for policy, values in accuracy.items():
            draws = values if policy == "random-heads" else [values]
            for seed, value in enumerate(draws):
                success = value[sample % len(value)] if isinstance(value, list) else value
                rows.append(
                    {
                        "sample_id": f"s{sample}",
                        "language": "en",
                        "policy": policy,
                        "heads": "" if policy in ("full", "window") else "en",
                        "share": 1.0 if policy == "full" else 0.25,
                        "seed": seed if policy == "random-heads" else -1,
                        "equals_split": policy == "random-heads" and seed == equal_seed,
                        "success": bool(success),
                        "rouge1_recall": float(success),
                        "bytes_ratio": 1.0,
                        "full_layers_ratio": 1.0,
                        "kv_heads_full": 1,
                        "kv_heads": 3,
                    }
                )
    return pd.DataFrame(rows)


def _verdicts(rows: pd.DataFrame) -> dict[str, dict]:
    return {row["claim"]: row for row, _ in kv_claims(rows, 300, 0, Context("toy", "toy"))}


def test_head_split_that_keeps_the_answers_holds_against_window_random_and_full():
    draws = [[0.0], [0.0], [0.0], [0.0]]  # every random draw loses the answer
    rows = _rows({"full": [1.0], "head-split": [1.0], "window": [0.0], "random-heads": draws})
    verdicts = _verdicts(rows)
    assert verdicts["kv.headsplit_vs_window"]["verdict"] == HOLDS
    assert verdicts["kv.headsplit_vs_window"]["estimate"] == pytest.approx(1.0)
    assert verdicts["kv.headsplit_vs_random"]["verdict"] == HOLDS
    assert verdicts["kv.headsplit_vs_random"]["estimate"] == pytest.approx(1.0)
    assert verdicts["kv.headsplit_vs_full"]["estimate"] == pytest.approx(MARGIN)
    assert verdicts["kv.headsplit_vs_full"]["verdict"] == HOLDS


def test_head_split_that_loses_the_answers_does_not_hold():
    rows = _rows({"full": [1.0], "head-split": [0.0], "window": [1.0], "random-heads": [[1.0], [1.0], [1.0]]})
    verdicts = _verdicts(rows)
    for claim in ("kv.headsplit_vs_window", "kv.headsplit_vs_random", "kv.headsplit_vs_full"):
        assert verdicts[claim]["verdict"] == FAILS, claim


def test_random_draws_equal_to_the_head_split_set_are_left_out_and_counted():
    # draw 1 is the head set itself (it answers like head-split): with it, random heads look better
    rows = _rows(
        {"full": [1.0], "head-split": [1.0], "window": [0.0], "random-heads": [[0.0], [1.0], [0.0]]},
        equal_seed=1,
    )
    verdict = _verdicts(rows)["kv.headsplit_vs_random"]
    assert verdict["estimate"] == pytest.approx(1.0)
    assert "1 random draw(s) equal to the head-split set left out" in verdict["test"]
    scores = compress_scores(rows, 50, 0)
    random = scores[scores["policy"] == "random-heads"].iloc[0]
    assert random["accuracy"] == 0.0 and random["draws_equal_to_split"] == 1
    contrasts = compress_contrasts(rows, 50, 0)
    against = contrasts[contrasts["contrast"] == "head-split - random-heads"].iloc[0]
    assert against["value"] == pytest.approx(1.0)
    every = _rows({"full": [1.0], "head-split": [1.0], "random-heads": [[1.0]]}, equal_seed=0)
    assert _verdicts(every)["kv.headsplit_vs_random"]["reason"] == "every random draw is the head set itself"


def test_non_inferiority_needs_a_full_cache_that_answers():
    rows = _rows({"full": [0.0], "head-split": [0.0], "window": [0.0]})
    verdicts = _verdicts(rows)
    assert verdicts["kv.headsplit_vs_full"]["verdict"] == NO_DATA
    assert verdicts["kv.headsplit_vs_full"]["reason"] == "full-cache accuracy 0: nothing to lose"
    assert verdicts["kv.headsplit_vs_random"]["verdict"] == NO_DATA  # no random-heads policy
    assert np.isnan(verdicts["kv.headsplit_vs_random"]["estimate"])
