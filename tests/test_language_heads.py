"""LAHIS importance: gate gradients against finite differences, both formulas against hand-computed
references, language-head selection against numpy, and the text windows' halves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model

from babelheads.analysis.language_heads import importance_scores, select_language_heads
from babelheads.data import corpora
from babelheads.errors import BabelheadsError, TaskError
from babelheads.experiments.importance import gate_gradients
from babelheads.models import LoadedModel, describe_heads
from babelheads.probe import HeadGates, Instrument
from babelheads.runner.losses import Scored, row_losses
from babelheads.tasks.lm_texts import TextSettings, TextWindow, TextWindows, split_documents


def _loaded(kind: str, tokenizer=None) -> LoadedModel:
    model = tiny_model(kind).double()
    return LoadedModel(model, tokenizer, describe_heads(model), {"model": kind}, False)


def _windows(count: int, length: int = 24, seed: int = 0) -> list[TextWindow]:
    generator = torch.Generator().manual_seed(seed)
    return [
        TextWindow(
            f"w{i}", "xx", "doc", tuple(torch.randint(3, 500, (length,), generator=generator).tolist())
        )
        for i in range(count)
    ]


def _loss(loaded, instrument, window, values) -> float:
    nll, count = row_losses(
        loaded, instrument, [Scored(window.input_ids)], HeadGates(values, frozenset({"prefill"}))
    )
    return float((nll[0] / count[0]).detach())


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_gate_gradients_match_finite_differences(kind):
    loaded = _loaded(kind)
    instrument = Instrument(loaded.model, loaded.layout)
    windows = _windows(2)
    gradient, losses = gate_gradients(loaded, instrument, windows)
    layout = loaded.layout
    assert gradient.shape == (2, layout.num_layers, layout.num_heads)
    eps = 1e-2  # central differences: error O(eps^2); a smaller eps meets rounding noise near 1e-9
    for row, window in enumerate(windows):
        for layer, head in [(0, 0), (layout.num_layers - 1, layout.num_heads - 1), (1, 2)]:
            up = torch.ones(layout.num_layers, layout.num_heads, dtype=torch.float64)
            down = up.clone()
            up[layer, head] += eps
            down[layer, head] -= eps
            numeric = (_loss(loaded, instrument, window, up) - _loss(loaded, instrument, window, down)) / (
                2 * eps
            )
            assert gradient[row, layer, head].item() == pytest.approx(numeric, rel=2e-3, abs=1e-7)
        assert losses[row].item() == pytest.approx(
            _loss(
                loaded,
                instrument,
                window,
                torch.ones(layout.num_layers, layout.num_heads, dtype=torch.float64),
            )
        )
    assert all(
        not parameter.requires_grad or parameter.grad is None for parameter in loaded.model.parameters()
    )


def test_a_batch_gives_each_rows_own_gradient():
    loaded = _loaded("llama")
    instrument = Instrument(loaded.model, loaded.layout)
    windows = _windows(3)
    together, _ = gate_gradients(loaded, instrument, windows)
    for row, window in enumerate(windows):
        alone, _ = gate_gradients(loaded, instrument, [window])
        torch.testing.assert_close(together[row], alone[0])


def test_a_zero_gate_equals_removing_the_heads_columns_of_o_proj():
    loaded = _loaded("qwen2")
    instrument = Instrument(loaded.model, loaded.layout)
    window = _windows(1)[0]
    values = torch.ones(loaded.layout.num_layers, loaded.layout.num_heads, dtype=torch.float64)
    values[1, 2] = 0.0
    gated = _loss(loaded, instrument, window, values)
    head_dim = loaded.layout.head_dim
    projection = loaded.model.model.layers[1].self_attn.o_proj.weight
    with torch.no_grad():
        saved = projection[:, 2 * head_dim : 3 * head_dim].clone()
        projection[:, 2 * head_dim : 3 * head_dim] = 0.0
        removed = _loss(loaded, instrument, window, torch.ones_like(values))
        projection[:, 2 * head_dim : 3 * head_dim] = saved
    assert gated == pytest.approx(removed, rel=1e-12)
    assert gated != pytest.approx(_loss(loaded, instrument, window, torch.ones_like(values)), rel=1e-6)


def _gradients(values: dict[str, np.ndarray], gates: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    rows = []
    for language, grads in values.items():
        for text, row in enumerate(grads):
            for index, value in enumerate(row):
                gate = 1.0 if gates is None else gates[language][text, index]
                rows.append(
                    {
                        "sample_id": f"{language}{text}",
                        "language": language,
                        "layer": index // 2,
                        "head": index % 2,
                        "gradient": value,
                        "gate": gate,
                    }
                )
    return pd.DataFrame(rows)


def test_both_formulas_equal_their_definitions():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(5, 4))
    gates = rng.uniform(0.5, 1.5, size=(5, 4))
    table = importance_scores(_gradients({"en": grads}, {"en": gates})).sort_values(["layer", "head"])
    paper = np.mean(np.abs(grads * gates) * (grads < 0), axis=0)
    code = np.mean(1000 * np.abs(grads) * gates, axis=0) * np.mean(grads * gates < 0, axis=0)
    np.testing.assert_allclose(table["paper"], paper)
    np.testing.assert_allclose(table["code"], code)
    assert (table["texts"] == 5).all()


def _importance(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"language": language, "layer": index // 5, "head": index % 5, "paper": value, "code": value}
        for language, values in scores.items()
        for index, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_selection_follows_percentile_generality_and_share():
    rng = np.random.default_rng(1)
    scores = {code: rng.uniform(0, 1, 50).tolist() for code in ("en", "de", "zh")}
    for code in scores:  # head 0 is strong everywhere: general
        scores[code][0] = 5.0
    table = select_language_heads(_importance(scores), percentile=80, min_languages=3, share=0.04)
    general = table[table["role"] == "general"]
    assert set(zip(general["layer"], general["head"], strict=True)) == {(0, 0)}
    for code, values in scores.items():
        threshold = np.percentile(values, 80)
        above = {i for i, v in enumerate(values) if v > threshold} - {0}
        specific = table[(table["language"] == code) & (table["role"] == "specific")].sort_values("rank")
        expected = sorted(above, key=lambda i: -values[i])[:2]  # n = int(50 * 0.04) = 2
        assert [
            layer * 5 + head for layer, head in zip(specific["layer"], specific["head"], strict=True)
        ] == expected
    with pytest.raises(BabelheadsError, match="impossible"):
        select_language_heads(_importance(scores), min_languages=4)


def test_windows_come_from_disjoint_halves_of_the_documents(tiny_tokenizer_session):
    assert split_documents(["a", "b", "c"], 0)["scoring"] != split_documents(["a", "b", "c"], 0)["evaluation"]
    scoring = TextWindows(TextSettings(("en", "de"), texts=6, window=64)).build(
        LoadedModel(None, tiny_tokenizer_session, None, {}, False)
    )
    evaluation = TextWindows(TextSettings(("en", "de"), texts=6, window=64, half="evaluation")).build(
        LoadedModel(None, tiny_tokenizer_session, None, {}, False)
    )
    assert len(scoring) == len(evaluation) == 12
    assert all(len(window.input_ids) == 64 and window.input_ids[0] == 0 for window in scoring)
    assert not {w.document for w in scoring} & {w.document for w in evaluation}
    # A parallel corpus splits the same topics in every language.
    names = [path.stem for path in sorted(Path(corpora.__file__).parent.glob("resources/corpus/en/*.txt"))]
    half = set(split_documents(names, 0)["scoring"])
    assert {w.document for w in scoring} <= half and {w.document for w in evaluation}.isdisjoint(half)
    with pytest.raises(TaskError, match="--texts"):
        TextWindows(TextSettings(("en",), texts=500, window=64)).build(
            LoadedModel(None, tiny_tokenizer_session, None, {}, False)
        )


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_padded_rows_score_only_their_own_tokens_with_their_own_gradients(kind):
    loaded = _loaded(kind)
    instrument = Instrument(loaded.model, loaded.layout)
    rows = [
        Scored(window.input_ids, start) for window, start in zip(_windows(3, 20), (1, 15, 8), strict=True)
    ]
    rows[1] = Scored(rows[1].input_ids[:17], 15)
    layout = loaded.layout
    values = torch.ones(3, layout.num_layers, layout.num_heads, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        nll, count = row_losses(loaded, instrument, rows, HeadGates(values, frozenset({"prefill"})))
        (nll / count).sum().backward()
    for index, row in enumerate(rows):
        alone = torch.ones(layout.num_layers, layout.num_heads, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            single, tokens = row_losses(loaded, instrument, [row], HeadGates(alone, frozenset({"prefill"})))
            (single / tokens).sum().backward()
        assert int(count[index]) == int(tokens[0]) == len(row.input_ids) - row.scored_from
        assert float(nll[index].detach()) == pytest.approx(float(single[0].detach()), rel=1e-9)
        torch.testing.assert_close(values.grad[index], alone.grad)
    assert torch.isfinite(values.grad).all()


def _ppl_frame(rise: dict[tuple[str, str], float], texts: int = 6, seed: int = 0) -> pd.DataFrame:
    """Synthetic perplexity rows: language x condition x text, log_ppl = base + rise + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for language in ("de", "en", "zh"):
        base = rng.normal(3, 0.3, texts)
        conditions = {
            "none": 0.0,
            **{f"specific:{m}": rise.get((language, m), 0.05) for m in ("de", "en", "zh")},
        }
        for condition, delta in conditions.items():
            for text in range(texts):
                rows.append(
                    {
                        "language": language,
                        "condition": condition,
                        "unit": f"{language}{text}",
                        "log_ppl": base[text] + delta + rng.normal(0, 0.005),
                    }
                )
    return pd.DataFrame(rows)


def test_contrasts_are_paired_means_with_their_baselines():
    from babelheads.analysis.language_effects import contrasts

    frame = _ppl_frame({("de", "de"): 0.5})
    extra = frame[(frame["condition"] == "none") & (frame["language"] == "de")].assign(
        condition="random-specific:de:0"
    )
    extra["log_ppl"] += 0.1
    table = contrasts(pd.concat([frame, extra]), "log_ppl", {"specific": "specific:{language}"}, 200, 0)
    row = table[table["language"] == "de"].iloc[0]
    wide = frame[frame["language"] == "de"].pivot(index="unit", columns="condition", values="log_ppl")
    assert row["masked_minus_none"] == pytest.approx((wide["specific:de"] - wide["none"]).mean())
    assert row["masked_minus_none_lo"] < row["masked_minus_none"] < row["masked_minus_none_hi"]
    assert row["random_minus_none"] == pytest.approx(0.1)
    assert row["masked_minus_random"] == pytest.approx(row["masked_minus_none"] - 0.1)
    # Languages without random draws get NaN baselines, never a zero that looks like a result.
    assert np.isnan(table[table["language"] == "en"].iloc[0]["random_minus_none"])


def test_diagonality_tells_a_diagonal_matrix_from_a_flat_one():
    from babelheads.analysis.language_effects import diagonality

    diagonal = _ppl_frame({(code, code): 0.5 for code in ("de", "en", "zh")})
    table = diagonality(diagonal, 200, 0).set_index(["test_language", "measure"])
    overall = table.loc[("all", "diagonal_difference")]
    assert overall["value"] == pytest.approx(0.45, abs=0.01) and overall["lo"] > 0.4
    assert table.loc[("all", "diagonal_ratio"), "value"] == pytest.approx(10, rel=0.05)
    flat = diagonality(_ppl_frame({}), 200, 0).set_index(["test_language", "measure"])
    assert abs(flat.loc[("all", "diagonal_difference"), "value"]) < 0.01
    # the one interval schema: n texts beside each interval (every language's for 'all'), and which
    # heads were masked (runs before exclusive masks: all specific heads)
    assert table.loc[("de", "diagonal_difference"), "n"] == 6 and overall["n"] == 18
    assert set(table["masked"]) == {"specific"}
    exclusive = diagonal.assign(condition=diagonal["condition"].str.replace("specific:", "exclusive:"))
    again = diagonality(exclusive, 200, 0).set_index(["test_language", "measure"])
    assert set(again["masked"]) == {"exclusive"}
    assert again.loc[("all", "diagonal_difference"), "value"] == pytest.approx(overall["value"])


def test_retrieval_overlap_counts_against_the_hypergeometric_chance():
    from scipy.stats import hypergeom

    from babelheads.analysis.language_heads import retrieval_overlap

    retrieval = pd.DataFrame(
        [
            {"language": "en", "layer": i // 4, "head": i % 4, "score": 0.5 if i in (0, 1, 2) else 0.0}
            for i in range(12)
        ]
    )
    heads = pd.DataFrame(
        [
            {"language": "en", "layer": 0, "head": 0, "role": "specific", "rank": 1, "score": 1.0},
            {"language": "en", "layer": 2, "head": 3, "role": "specific", "rank": 2, "score": 1.0},
            {"language": "en", "layer": 0, "head": 1, "role": "general", "rank": 0, "score": 1.0},
        ]
    )
    importance = retrieval.rename(columns={"score": "paper"}).assign(
        paper=lambda f: f["paper"] + f.index / 100
    )
    table = retrieval_overlap(retrieval, heads, importance, 12, "paper").set_index(
        ["language", "language_heads"]
    )
    row = table.loc[("en", "specific")]
    assert (row["retrieval_heads"], row["heads"], row["overlap"]) == (3, 2, 1)
    assert row["expected_by_chance"] == pytest.approx(3 * 2 / 12)
    assert row["p_at_least"] == pytest.approx(hypergeom.sf(0, 12, 3, 2))
    assert (
        table.loc[("en", "language"), "overlap"] == 2 and table.loc[("en", "language"), "shared"] == "0-0 0-1"
    )


def test_answer_rules():
    from babelheads.tasks.off_target import identify
    from babelheads.tasks.qa import hit
    from babelheads.tasks.transfer import TransferPrompt, TransferSettings, TransferTask, followed

    assert hit("Samarkand.", " It was samarkand, in Asia") and not hit("twice", "two times")
    assert identify("Die Gezeiten entstehen durch die Anziehungskraft des Mondes.") == "de"
    assert identify("潮汐是海面有规律的升降。") == "zh" and identify(" 1. ") == "none"
    task = TransferTask(TransferSettings(("de", "zh"), per_pair=2))
    assert len(task.prompts) == 4 and len(set(task.sample_ids())) == 4
    prompt = TransferPrompt("de", "zh", "Alice", "painter", "baker")
    words = task.words
    assert followed(" Maler.", prompt, words) == "first"
    assert followed(" a painter", prompt, words) == "first"
    assert followed(" " + words["zh"].occupations["baker"], prompt, words) == "second"
    assert followed(" baker", prompt, words) == "second"
    assert followed(" nothing", prompt, words) == "neither"
    text = task.text(task.prompts[0])
    assert words["de"].occupations[task.prompts[0].first_job] in text


def test_random_baseline_intervals_include_the_spread_between_head_draws():
    from babelheads.analysis.language_effects import paired

    rows = []
    for unit in range(20):
        rows.append({"unit": unit, "condition": "none", "v": 1.0})
        rows.append({"unit": unit, "condition": "random-x:a:0", "v": 1.0})  # a harmless draw
        rows.append({"unit": unit, "condition": "random-x:a:1", "v": 2.0})  # a draw that hits a key head
    effect = paired(pd.DataFrame(rows), "v", ["random-x:a:0", "random-x:a:1"], ["none"], 400, 0)
    assert effect.value == pytest.approx(0.5)
    assert effect.lo == pytest.approx(0.0) and effect.hi == pytest.approx(1.0)


def test_random_head_sets_are_distinct_while_the_pool_allows():
    from babelheads.experiments.language_tests import random_head_sets
    from babelheads.heads import HeadLayout

    layout = HeadLayout(4, 2, 1, 8)
    avoid = {(0, 0), (1, 1)}
    sets = random_head_sets(layout, 2, avoid, 10, "x")
    assert len(set(sets)) == 10 and all(len(s) == 2 and not set(s) & avoid for s in sets)
    assert sets == random_head_sets(layout, 2, avoid, 10, "x")  # seeded
    tiny = random_head_sets(HeadLayout(1, 2, 1, 8), 1, set(), 3, "y")
    assert len(tiny) == 3 and len(set(tiny)) == 2  # only two heads exist: a repeat, not a hang


def test_xquad_style_datasets_load_through_hf(monkeypatch):
    import sys
    import types

    from babelheads.data.qa import load_questions

    rows = [
        {
            "id": "q1",
            "context": "Der Rhein fließt durch Basel.",
            "question": "Wodurch fließt der Rhein?",
            "answers": {"text": ["Basel"], "answer_start": [23]},
        },
        {
            "id": "q2",
            "context": "Ohne Antwort.",
            "question": "?",
            "answers": {"text": [], "answer_start": []},
        },
    ]
    seen = {}

    def load_dataset(name, config, split):
        seen.update(name=name, config=config, split=split)
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    questions = load_questions("hf:google/xquad:xquad.{lang}:validation", "de")
    assert seen == {"name": "google/xquad", "config": "xquad.de", "split": "validation"}
    assert [(q.id, q.answer) for q in questions] == [("q1", "Basel")]  # a row without an answer is left out
    assert questions[0].document.startswith("context-")


def test_weights_that_cannot_carry_gradients_are_refused():
    from babelheads.experiments.importance import check_differentiable

    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.zeros(2, dtype=torch.int8), requires_grad=False)
    with pytest.raises(BabelheadsError, match="cannot carry gradients"):
        check_differentiable(LoadedModel(model, None, None, {}, False))


def test_drift_decay_is_a_no_op_on_bf16_gates_as_in_the_released_code():
    """AdamW's default decay (lr 1e-2 x 0.01) multiplies a gate by 0.9999: a bf16 gate of 1 rounds back
    to 1 (as the released code's), a float32 one shrinks. A zero gradient isolates the decay."""
    from babelheads.experiments.importance import DRIFT_DTYPE, drift_step, drifting_gates

    gate, optimiser = drifting_gates((2, 3))
    assert gate.dtype == DRIFT_DTYPE == torch.bfloat16
    drift_step(gate, optimiser, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(gate.detach(), torch.ones(2, 3, dtype=torch.bfloat16))
    wide, optimiser = drifting_gates((2, 3), torch.float32)
    drift_step(wide, optimiser, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.allclose(wide.detach(), torch.full((2, 3), 1 - 1e-2 * 0.01)) and (wide < 1).all()
    # A gradient still moves a bf16 gate: Adam's first step is about lr, rounded to bf16's spacing.
    moved, optimiser = drifting_gates((1, 2))
    drift_step(moved, optimiser, torch.tensor([[1.0, -1.0]]))
    assert moved.detach().double().tolist() == [[0.98828125, 1.0078125]]
