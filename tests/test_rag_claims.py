"""Dynamic RAG's claims, budget-matched baselines and threshold sweep: hand-made tables where a claim
holds, fails or has no data; the budget-matched policies against their reference; the sweep's
bookkeeping against hand cases; and a tiny model's run end to end, where the random retriever (the
negative control) never holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from babelheads.analysis.claims import COLUMNS, HOLDS, NO_DATA, PART_COLUMNS, Context
from babelheads.analysis.rag_claims import rag_claims_tables
from babelheads.analysis.rag_scores import _outcome, rag_contrasts, threshold_sweep
from babelheads.data.multihop import TwoHop
from babelheads.errors import BabelheadsError
from babelheads.execution import Execution
from babelheads.rag.collection import Bm25Index, Document
from babelheads.rag.loop import Branch, LoopSettings, Question

IDS = ["dynamic.rag_vs_none", "dynamic.rag_vs_static", "dynamic.rag_vs_last_layer", "dynamic.rag_vs_question"]
CONTEXT = Context("toy", "runs/rag")
POLICIES = ("question-matched", "random-retriever")


def _samples(f1: dict[str, list[float]], languages: tuple[str, ...] = ("en", "de")) -> pd.DataFrame:
    """One row per question and selection; ``f1[selection]`` gives each question's F1 (the same
    questions in every language)."""
    rows = []
    for code in languages:
        for selection, values in f1.items():
            for index, value in enumerate(values):
                rows.append(
                    {
                        "sample_id": f"{code}-q{index}",
                        "language": code,
                        "selection": selection,
                        "f1": value,
                        "matched_to": "dynamic" if selection in POLICIES else "",
                    }
                )
    return pd.DataFrame(rows)


def _verdicts(tables: dict[str, pd.DataFrame], name: str = "claims") -> dict[str, str]:
    return dict(zip(tables[name]["claim"], tables[name]["verdict"], strict=True))


BASE = [0.0, 0.1, 0.2, 0.0, 0.3, 0.1, 0.0, 0.2, 0.1, 0.0]


def test_the_claims_hold_when_the_dynamic_heads_answer_better_in_every_language():
    better = [value + 0.4 + 0.05 * (index % 3) for index, value in enumerate(BASE)]
    samples = _samples(
        {
            "dynamic": better,
            "static": BASE,
            "dragin": BASE,
            "question": BASE,
            "none": BASE,
            "question-matched": BASE,
        }
    )
    tables = rag_claims_tables(samples, 200, 0, CONTEXT, "a toy protocol")
    claims = tables["claims"]
    assert list(claims.columns) == list(COLUMNS) and list(tables["claim_parts"].columns) == list(PART_COLUMNS)
    assert claims["claim"].tolist() == IDS
    assert set(claims["verdict"]) == {HOLDS}
    assert (claims["estimate"] > 0).all() and (claims["lo"] > 0).all() and (claims["n"] == 10).all()
    # One part per language, intersection-union named in the test; the protocol ends it.
    assert set(tables["claim_parts"]["part"]) == {"en", "de"}
    assert claims["test"].str.contains("a toy protocol").all()
    assert claims["test"].str.contains("intersection-union over 2 parts").all()
    assert claims["test"].str.contains("SQuAD").all() and claims["test"].str.contains("MLQA").all()
    assert (claims["unit"] == "questions (paired across selections)").all()
    # No random retriever in the run: the control was not run.
    assert (claims["control"] == "").all() and "control_claims" not in tables


def test_a_claim_fails_when_its_baseline_answers_better_and_missing_selections_have_no_data():
    worse = [max(value - 0.3 - 0.05 * (index % 2), -1.0) for index, value in enumerate(BASE)]
    samples = _samples({"dynamic": worse, "static": BASE, "none": BASE})
    tables = rag_claims_tables(samples, 200, 0, CONTEXT)
    verdicts = _verdicts(tables)
    assert verdicts["dynamic.rag_vs_static"] == "does not hold"
    assert verdicts["dynamic.rag_vs_none"] == "does not hold"
    claims = tables["claims"].set_index("claim")
    assert claims.loc["dynamic.rag_vs_static", "hi"] < 0
    for claim, missing in (
        ("dynamic.rag_vs_last_layer", "dragin"),
        ("dynamic.rag_vs_question", "question-matched"),
    ):
        assert verdicts[claim] == NO_DATA
        assert missing in claims.loc[claim, "reason"] and "--selections" in claims.loc[claim, "reason"]


def test_a_matched_baseline_that_copied_another_selections_budget_is_not_read():
    samples = _samples({"dynamic": BASE, "dragin": BASE, "question-matched": BASE}, ("en",))
    samples.loc[samples["selection"] == "question-matched", "matched_to"] = "dragin"
    claims = rag_claims_tables(samples, 100, 0, CONTEXT)["claims"].set_index("claim")
    assert claims.loc["dynamic.rag_vs_question", "verdict"] == NO_DATA
    assert "budget of dragin" in claims.loc["dynamic.rag_vs_question", "reason"]


def test_the_random_retriever_is_the_control_and_fills_the_control_column():
    better = [value + 0.4 for value in BASE]
    # The dynamic heads help; random documents do not (the same answers as without retrieval).
    samples = _samples(
        {
            "dynamic": better,
            "static": BASE,
            "dragin": BASE,
            "none": BASE,
            "question-matched": BASE,
            "random-retriever": BASE,
        }
    )
    tables = rag_claims_tables(samples, 200, 0, CONTEXT)
    assert tables["control_claims"]["claim"].tolist() == IDS
    assert HOLDS not in set(tables["control_claims"]["verdict"])
    assert list(tables["control_claim_parts"].columns) == list(PART_COLUMNS)
    assert tables["claims"]["control"].tolist() == tables["control_claims"]["verdict"].tolist()
    assert set(tables["claims"]["verdict"]) == {HOLDS}
    assert tables["control_claims"]["test"].str.contains("random-retriever").all()


def test_contrasts_pair_a_policy_with_the_selection_whose_budget_it_copied():
    samples = _samples(
        {"dynamic": [0.5, 0.2, 0.4], "dragin": [0.1, 0.2, 0.0], "question-matched": [0.0, 0.2, 0.1]}, ("en",)
    ).assign(exact=False)
    contrasts = rag_contrasts(samples, 50, 0)
    names = set(contrasts["contrast"])
    assert "dynamic - question-matched" in names and "dragin - question-matched" not in names
    row = contrasts[(contrasts["contrast"] == "dynamic - question-matched") & (contrasts["metric"] == "f1")]
    assert row["value"].iloc[0] == pytest.approx((0.5 + 0.0 + 0.3) / 3)


DOCUMENTS = [
    Document("q1/fact0", "the harbour town of Tessary", "fact", "q1"),
    Document("q1/fact1", "Tessary lies on the coast near the harbour", "fact", "q1"),
    Document("b", "the mountain village of Ostrel near the border", "distractor"),
    Document("c", "tides rise twice a day in the harbour", "corpus"),
    Document("d", "glass was blown in the old town", "corpus"),
    Document("e", "a harbour town trades fish", "corpus"),
]


def _reference() -> Branch:
    item = TwoHop("q1", ("f0", "f1"), (), "Which harbour town lies on the coast?", "Tessary")
    branch = Branch(Question("en-q1", "en", item), "dynamic")
    # three retrievals: two documents, none (a query that matched nothing), one
    for documents in (["x", "y"], [], ["z"]):
        branch.trace.append({"step": 1, "documents": documents})
    branch.retrievals = 3
    return branch


def test_the_policies_copy_the_reference_budget_and_the_random_draw_is_seeded():
    from babelheads.experiments.rag import _budget_branch

    index = Bm25Index.build(DOCUMENTS, "words")
    reference = _reference()
    matched = _budget_branch(reference, "question-matched", index, 0)
    assert matched.retrievals == 3 and [len(entry["documents"]) for entry in matched.trace] == [2, 0, 1]
    # The question as the query, three times: its three best documents, best first, none twice.
    best = [document.id for document, _ in index.search(reference.question.item.question, 3)]
    assert [document.id for document in matched.documents] == best
    assert all(entry["query"] == reference.question.item.question for entry in matched.trace)
    drawn = _budget_branch(reference, "random-retriever", index, 0)
    assert drawn.retrievals == 3 and len(drawn.documents) == 3
    assert len({document.id for document in drawn.documents}) == 3
    again = _budget_branch(reference, "random-retriever", index, 0)
    assert [d.id for d in again.documents] == [d.id for d in drawn.documents]  # same seed, same draw
    draws = {
        tuple(d.id for d in _budget_branch(reference, "random-retriever", index, s).documents)
        for s in range(8)
    }
    assert len(draws) > 1  # the seed moves the draw
    assert all(entry["step"] == -1 for entry in drawn.trace)


def test_the_sweep_knows_an_answer_only_where_the_run_determines_it():
    steps = np.array([0, 1, 2, 3])
    # One round: RIND 0.1, 0.5, 0.2, 0.9; the run (threshold 0.3, budget 2) tried step 1 and found
    # documents, then round 2 (from step 1 on) was scanned with nothing over 0.3.
    rounds = [
        (0, steps, np.array([0.1, 0.5, 0.2, 0.9])),
        (1, np.array([1, 2, 3]), np.array([0.0, 0.25, 0.1])),
    ]
    attempts = [(1, 1, True)]
    assert _outcome(rounds, attempts, 0.3, 2) == "recorded"
    assert _outcome(rounds, attempts, 0.45, 2) == "recorded"  # the same first try; round 2 stays quiet
    assert _outcome(rounds, attempts, 0.95, 2) == "none"  # nothing triggers: the no-retrieval answer
    assert _outcome(rounds, attempts, 0.15, 2) == "unknown"  # step 0 stays under; round 2 would try 2
    assert _outcome(rounds, attempts, 0.05, 2) == "unknown"  # step 0 would be tried first
    assert _outcome(rounds, attempts, 0.6, 2) == "unknown"  # step 3 would be tried instead
    # A try that found nothing keeps scanning; the budget spent ends the scan whatever comes after.
    assert _outcome([(0, steps, np.array([0.5, 0.5, 0.0, 0.7]))], [(1, 0, False), (2, 1, False)], 0.3, 2) == (
        "recorded"
    )


def test_the_sweep_table_has_shares_and_f1_per_threshold():
    samples = pd.DataFrame(
        [
            {"sample_id": sample, "language": "en", "selection": selection, "f1": f1}
            for sample, selection, f1 in [
                ("a", "dynamic", 1.0),
                ("a", "none", 0.0),
                ("b", "dynamic", 0.5),
                ("b", "none", 0.5),
            ]
        ]
    )
    steps = pd.DataFrame(
        [
            {"sample_id": "a", "language": "en", "selection": "dynamic", "round": 1, "retrievals": 0}
            | {"step": step, "rind": value}
            for step, value in enumerate([0.1, 0.5, 0.2, 0.9])
        ]
        + [
            {"sample_id": "a", "language": "en", "selection": "dynamic", "round": 2, "retrievals": 1}
            | {"step": step, "rind": value}
            for step, value in zip([1, 2, 3], [0.0, 0.25, 0.1], strict=True)
        ]
        + [
            {"sample_id": "b", "language": "en", "selection": "dynamic", "round": 1, "retrievals": 0}
            | {"step": step, "rind": 0.05}
            for step in range(4)
        ]
    )
    trace = pd.DataFrame(
        [{"sample_id": "a", "selection": "dynamic", "retrieval": 1, "step": 1, "documents": "d1"}]
    )
    sweep = threshold_sweep(samples, steps, trace, 0.3, 2, 50, 0, thresholds=[0.0, 0.3, 0.95])
    assert {"triggered", "triggered_lo", "triggered_hi", "f1", "f1_lo", "f1_hi", "determined", "n"} <= set(
        sweep.columns
    )
    rows = sweep.set_index("threshold")
    assert rows.loc[0.3, "run_threshold"] and rows.loc[0.3, "determined"] == 2
    assert rows.loc[0.3, "triggered"] == pytest.approx((2 / 4 + 0) / 2)
    assert rows.loc[0.3, "retrieving"] == pytest.approx(0.5) and rows.loc[0.3, "f1"] == pytest.approx(0.75)
    # Over every RIND: no retrieval anywhere, so the no-retrieval F1 of both questions.
    assert rows.loc[0.95, "triggered"] == 0 and rows.loc[0.95, "f1"] == pytest.approx(0.25)
    # At 0 question a would try step 0 first (unknown) and b would now retrieve (unknown).
    assert rows.loc[0.0, "determined"] == 0 and np.isnan(rows.loc[0.0, "f1"])
    assert rows.loc[0.0, "triggered"] == pytest.approx(1.0)


def test_policies_need_a_head_guided_selection_to_copy():
    from babelheads.experiments.rag import RagConfig

    with pytest.raises(BabelheadsError, match="add one of dynamic, static, dragin"):
        RagConfig(model="m", selections=("question-matched", "none"))
    with pytest.raises(BabelheadsError, match="Unknown selection oracle"):
        RagConfig(model="m", selections=("dragin", "oracle"))


class _FixedHeads:
    """Heads for the tiny model without a heads run: two fixed heads for dynamic, two others for
    static."""

    def choose(self, selection: str, _language: str, _state) -> tuple[list[int], list[float]]:
        return ([1, 6] if selection == "dynamic" else [0, 3]), [1.0, 1.0]


def test_a_tiny_models_run_writes_the_claims_and_the_control_never_holds(
    tiny_model_dir, tmp_path, monkeypatch
):
    import babelheads.experiments.rag as rag_module
    from babelheads.experiments.rag import RagConfig, rag

    # the dynamic and static selections without a heads run: fixed heads stand in for the probe's
    monkeypatch.setattr(rag_module, "_heads_run", lambda _config: None)
    monkeypatch.setattr(rag_module, "_load_heads", lambda _run, _config: _FixedHeads())
    config = RagConfig(
        heads="fixed",
        model=str(tiny_model_dir),
        languages=("en",),
        count=3,
        selections=(
            "dynamic",
            "static",
            "dragin",
            "question",
            "none",
            "question-matched",
            "random-retriever",
        ),
        loop=LoopSettings(threshold=0.0, max_new_tokens=6, retrievals=2, documents=2, head_count=2),
        replicates=50,
    )
    out = tmp_path / "rag"
    store = rag(config, out, Execution(device="cpu", progress=False))
    claims = store.derived("claims")
    assert claims["claim"].tolist() == IDS and list(claims.columns) == list(COLUMNS)
    assert list(store.derived("claim_parts").columns) == list(PART_COLUMNS)
    control = store.derived("control_claims")
    assert HOLDS not in set(control["verdict"]) and HOLDS not in set(claims["control"])
    assert (claims["control"] != "").all()
    assert claims["test"].str.contains("full-context softmax").all()
    # The policies spend the dynamic selection's budget on every question.
    samples = store.table("samples")
    wide = samples.pivot_table(index="sample_id", columns="selection", values=["retrievals", "documents"])
    assert (wide["retrievals"]["question-matched"] == wide["retrievals"]["dynamic"]).all()
    assert (wide["retrievals"]["random-retriever"] == wide["retrievals"]["dynamic"]).all()
    assert (wide["documents"]["random-retriever"] == wide["documents"]["dynamic"]).all()
    assert (wide["documents"]["question-matched"] <= wide["documents"]["dynamic"]).all()
    assert set(samples.loc[samples["selection"].isin(POLICIES), "matched_to"]) == {"dynamic"}
    # The recorded RIND of a triggering step is the one the loop triggered on.
    steps, trace = store.table("steps"), store.table("trace")
    tried = trace[(trace["step"] >= 0) & trace["selection"].isin(["dynamic", "static", "dragin"])]
    assert len(tried)
    for entry in tried.itertuples():
        recorded = steps[
            (steps["sample_id"] == entry.sample_id)
            & (steps["selection"] == entry.selection)
            & (steps["step"] == entry.step)
        ]
        # a cut step starts the next round too: one of its rows is the round that tried it
        assert np.isclose(recorded["rind"].to_numpy(float), entry.rind, rtol=1e-4, atol=1e-6).any()
    # At the run's own threshold the sweep knows every answer: its F1 is the run's.
    sweep = store.derived("rag_threshold_sweep")
    own = sweep[sweep["run_threshold"]].set_index("selection")
    scores = store.derived("rag_scores").set_index(["language", "selection"])
    for selection in ("dynamic", "static", "dragin"):
        assert own.loc[selection, "determined"] == own.loc[selection, "n"] == 3
        assert own.loc[selection, "f1"] == pytest.approx(scores.loc[("en", selection), "f1"])
    # A lost part is redone to the same rows (the random draw included).
    before = {name: store.derived(name) for name in ("claims", "rag_scores", "rag_threshold_sweep")}
    lost = sorted(store.finished())[0]
    for table in ("samples", "trace", "steps"):
        (out / "tables" / table / f"{lost}.parquet").unlink()
    store = rag(config, out, Execution(device="cpu", progress=False))
    for name, frame in before.items():
        pd.testing.assert_frame_equal(store.derived(name), frame)
