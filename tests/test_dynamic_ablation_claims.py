"""The dynamic-ablation claims: from hand-made step rows each can hold and can fail (and says why it has no
data); from dynamic-ablate runs on the copying model, the claims table is written with its fixed
columns, `babelheads claims` prints it, and on the negative control (random heads masked in place of
the dynamic heads) no claim holds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from copying_model import Script
from test_dynamic_runs import ANALYSIS, HELD_OUT, TASK, copier  # noqa: F401  (copier: a module fixture)

from babelheads.analysis.claims import COLUMNS, FAILS, HOLDS, NO_DATA, PART_COLUMNS, Context
from babelheads.analysis.dynamic_ablation import contrasts, per_sample
from babelheads.analysis.dynamic_ablation_claims import COLLAPSE, DYNAMIC, MOSTLY, dynamic_ablation_claims
from babelheads.execution import Execution
from babelheads.experiments.dynamic import DynamicConfig, dynamic
from babelheads.experiments.dynamic_ablate import DynamicAblateConfig, dynamic_ablate
from babelheads.tasks.niah import NiahTask

IDS = (
    "dynamic.ablation_vs_static",
    "dynamic.ablation_vs_random",
    "dynamic.progressive_collapse",
    "dynamic.compensation",
)


def _frames(
    kept: dict[str, float | list[float]],
    compensating: tuple[int, int] = (2, 0),
    samples: int = 8,
    steps: int = 3,
    languages: tuple[str, ...] = ("en", "de"),
    answered: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, steps) tables of a dynamic-ablate run. kept : condition -> the share of a sample's
    retrieval steps whose token survives (random: one share per draw; progressive: at k = 1 and 2, the
    given share at k = 2); a sample's steps keep the token while step / steps is below the share.
    compensating : (compensating heads, of them static top-K) at each progressive step."""
    step_rows, sample_rows = [], []
    for language in languages:
        for index in range(samples):
            sample_id = f"{language}-{index}"
            # a step without a dynamic head, its token lost, that must count nowhere
            for condition, k in (("clean", 0), ("progressive", 1), ("progressive", 2)):
                step_rows.append(_step(sample_id, language, steps, 0, condition, k, -1, False))
            for condition, value in {"clean": 1.0, **kept}.items():
                draws = value if isinstance(value, list) else [value]
                for seed, share in enumerate(draws):
                    seed = seed if condition == "random" else -1
                    ks = (1, 2) if condition == "progressive" else (0,)
                    for k in ks:
                        chosen = 1.0 if k == 1 else share
                        for step in range(steps):
                            # one sample in four keeps one step more, so the intervals are not points
                            keep = step < round(chosen * steps) + (index % 4 == 0 and chosen < 1)
                            row = _step(sample_id, language, step, 1, condition, k, seed, keep)
                            if condition == "progressive":
                                row["compensating"], row["compensating_static"] = compensating
                            step_rows.append(row)
                    sample_rows.append(
                        {
                            "sample_id": sample_id,
                            "language": language,
                            "condition": condition,
                            "k": 0,
                            "seed": seed,
                            "exact": answered or condition != "clean",
                            "rougeL": 1.0,
                        }
                    )
    return pd.DataFrame(sample_rows), pd.DataFrame(step_rows)


def _step(
    sample_id: str, language: str, step: int, dynamic: int, condition: str, k: int, seed: int, kept: bool
) -> dict:
    return {
        "sample_id": sample_id,
        "language": language,
        "step": step,
        "dynamic_heads": dynamic,
        "condition": condition,
        "k": k,
        "seed": seed,
        "heads": "" if condition == "clean" else "1-0",
        "kept": bool(kept),
        "compensating": 0,
        "compensating_static": 0,
    }


def _claims(
    samples: pd.DataFrame, steps: pd.DataFrame, **options: object
) -> tuple[dict[str, dict], pd.DataFrame]:
    rows = dynamic_ablation_claims(samples, steps, 300, 0, Context("toy", "toy"), **options)
    parts = pd.DataFrame([line for _, lines in rows for line in lines])
    return {row["claim"]: row for row, _ in rows}, parts


PAPER_SIDE = {"dynamic": 0.0, "static": 1.0, "random": [1.0, 2 / 3, 1.0], "progressive": 0.0}


def test_masking_the_dynamic_heads_that_breaks_retrieval_holds_every_claim():
    claims, parts = _claims(*_frames(PAPER_SIDE))
    for claim in IDS:
        assert claims[claim]["verdict"] == HOLDS, claims[claim]
        assert claims[claim]["paper"] == DYNAMIC
    # one part per language, intersection-union over them
    assert set(parts.loc[parts["claim"] == "dynamic.ablation_vs_static", "part"]) == {"en", "de"}
    assert set(parts.loc[parts["claim"] == "dynamic.progressive_collapse", "part"]) == {"en, k=2", "de, k=2"}
    assert "intersection-union over 2 parts" in claims["dynamic.ablation_vs_static"]["test"]
    assert claims["dynamic.compensation"]["estimate"] == pytest.approx(1 - MOSTLY)  # none of them static
    assert claims["dynamic.ablation_vs_static"]["n"] == 8


def test_the_same_claims_fail_when_static_random_and_unmasked_heads_matter_more():
    against = {"dynamic": 1.0, "static": 0.0, "random": [0.0, 1 / 3], "progressive": 1.0}
    claims, _ = _claims(*_frames(against, compensating=(2, 2)))
    for claim in IDS:
        assert claims[claim]["verdict"] == FAILS, claims[claim]
    assert claims["dynamic.progressive_collapse"]["estimate"] == pytest.approx(COLLAPSE - 1.0)
    assert claims["dynamic.compensation"]["estimate"] == pytest.approx(-MOSTLY)  # every one static


def test_the_estimates_are_the_runs_contrasts_signed_for_the_paper_and_random_draws_are_averaged():
    samples, steps = _frames(PAPER_SIDE)
    _, parts = _claims(samples, steps)
    table = contrasts(per_sample(samples, steps), 100, 0)
    for baseline in ("static", "random"):
        value = table[
            (table["language"] == "en")
            & (table["metric"] == "token_kept")
            & (table["contrast"] == f"dynamic - {baseline}")
        ]["value"].iloc[0]
        part = parts[(parts["claim"] == f"dynamic.ablation_vs_{baseline}") & (parts["part"] == "en")]
        assert part["estimate"].iloc[0] == pytest.approx(-value)
    # random - dynamic: each sample's mean over its three draws (all, 2 and all of its 3 steps kept; a
    # sample in four keeps one step more) minus its dynamic share (none; one step in that sample)
    random = parts[(parts["claim"] == "dynamic.ablation_vs_random") & (parts["part"] == "en")].iloc[0]
    assert random["estimate"] == pytest.approx(np.mean([8 / 9 - 0] * 6 + [1 - 1 / 3] * 2))
    assert random["lo"] < random["estimate"] < random["hi"]  # the draws' spread is in the interval


def test_no_data_names_why():
    samples, steps = _frames(PAPER_SIDE, answered=False)
    claims, _ = _claims(samples, steps)
    for claim in IDS:
        assert claims[claim]["verdict"] == NO_DATA
        assert claims[claim]["reason"] == "no sample answered right without masks"
    samples, steps = _frames(PAPER_SIDE, compensating=(0, 0))
    claims, _ = _claims(samples, steps)
    assert claims["dynamic.compensation"]["reason"] == "no head compensated at any progressive stage"
    claims, _ = _claims(samples, steps.drop(columns=["compensating", "compensating_static"]))
    assert claims["dynamic.compensation"]["reason"] == "the run records no compensating heads"
    claims, _ = _claims(samples, steps[steps["condition"] != "progressive"])
    assert claims["dynamic.progressive_collapse"]["reason"] == "no progressive masking"
    assert claims["dynamic.ablation_vs_static"]["verdict"] == HOLDS  # the other claims still stand


def test_a_control_run_says_so_and_has_no_compensation():
    claims, _ = _claims(*_frames(PAPER_SIDE), control=True, static_k=20)
    for claim in IDS:
        assert claims[claim]["test"].startswith("NEGATIVE CONTROL")
    assert claims["dynamic.compensation"]["verdict"] == NO_DATA
    assert "negative control" in claims["dynamic.compensation"]["reason"]
    assert "K = 20" in claims["dynamic.compensation"]["test"]


HEADS = replace(TASK, depths=(0.5,), needles_per_cell=1)
"""One haystack per language ranks the static heads (a dynamic run without probes: cheap)."""
CONTROL = replace(HELD_OUT, depths=(0.2, 0.4, 0.6, 0.8))
"""Four held-out haystacks per language: on two, a part of the control holds by chance as often as
both samples' draws fall on one side."""


@pytest.fixture(scope="module")
def ablations(copier, tmp_path_factory):  # noqa: F811  (the imported module fixture)
    for settings in (HEADS, CONTROL):  # HELD_OUT is scripted by the copier fixture
        for sample in NiahTask(settings).build(copier):
            copier.model.script[sample.input_ids] = Script(sample.spans["answer"], sample.spans["needle"])
    out = tmp_path_factory.mktemp("dynamic-ablate")
    analysis = replace(ANALYSIS, probes=False)
    heads = dynamic(
        DynamicConfig(model="copying-stub", niah=HEADS, max_new_tokens=16, analysis=analysis),
        out / "heads",
        Execution(progress=False),
    )
    config = DynamicAblateConfig(
        heads=str(heads.root),
        niah=HELD_OUT,
        max_new_tokens=16,
        random_seeds=2,
        progressive=(2,),
        static_k=1,
        replicates=200,
    )
    real = dynamic_ablate(config, out / "real", Execution(progress=False))
    control_config = replace(config, niah=CONTROL, control=True)
    control = dynamic_ablate(control_config, out / "control", Execution(progress=False))
    return config, real, control


def test_the_run_writes_the_claims_and_the_control_holds_none(ablations):
    config, real, control = ablations
    for store in (real, control):
        claims = store.derived("claims")
        assert list(claims.columns) == list(COLUMNS)
        assert list(claims["claim"]) == list(IDS)
        assert list(store.derived("claim_parts").columns) == list(PART_COLUMNS)
        assert set(claims["model"]) == {"copying-stub"} and set(claims["run"]) == {str(store.root)}
    verdicts = real.derived("claims").set_index("claim")["verdict"]
    # The copier's one retriever is every step's dynamic head: masking it breaks the step, a random head
    # of four mostly does not, and the static top head is the same head (no difference).
    assert verdicts["dynamic.ablation_vs_random"] == HOLDS
    assert verdicts["dynamic.progressive_collapse"] == HOLDS
    assert verdicts["dynamic.ablation_vs_static"] != HOLDS
    assert verdicts["dynamic.compensation"] == NO_DATA  # nothing copies in the retriever's place
    assert not (control.derived("claims")["verdict"] == HOLDS).any(), control.derived("claims")
    assert control.derived("claims")["test"].str.startswith("NEGATIVE CONTROL").all()
    # The control masks random heads as "dynamic" and in the progressive stages; static stays static.
    steps = control.table("steps")
    for condition in ("dynamic", "progressive"):
        assert (~steps.loc[steps["condition"] == condition, "heads"].str.contains("1-0")).any()
    assert (steps.loc[steps["condition"] == "static", "heads"] == "1-0").all()
    # The run without the control keeps the identity it had before the option existed.
    assert "control" not in config.identity("m") and replace(config, control=True).identity("m")["control"]


def test_babelheads_claims_prints_the_runs_claims(ablations, monkeypatch, capsys):
    from test_cli_and_runs import run_cli

    _, real, _ = ablations
    code, text, err = run_cli(monkeypatch, capsys, "claims", str(real.root), "--parts")
    assert code == 0, err
    for claim in IDS:
        assert claim in text
    assert "holds" in text and "en, k=2" in text
