"""Dynamic RAG: the trigger and query pieces against hand computations, BM25 against its formula, the
loop's records against eager attention, and the command end to end on a tiny model."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from test_cli_and_runs import assert_one_line_error, run_cli

from babelheads.analysis.rag_scores import rag_contrasts, rag_scores
from babelheads.data.languages import load_language
from babelheads.data.multihop import TwoHop, load_two_hop
from babelheads.errors import BabelheadsError, TaskError
from babelheads.execution import Execution
from babelheads.experiments.rag import RagConfig, _questions
from babelheads.probe import Instrument, ProbeSettings
from babelheads.rag.collection import Bm25Index, Document, build_collection, cached_index
from babelheads.rag.loop import LoopSettings, Question, RetrievalLoop
from babelheads.rag.trigger import (
    content_flags,
    load_stop_words,
    query_windows,
    rind,
    token_importance,
    whole_words,
)
from babelheads.runner.decode import greedy_decode
from babelheads.runner.stops import StopRule
from babelheads.runs import RunStore
from babelheads.scoring import exact_match, first_line, normalize_answer, token_f1


def test_token_importance_is_the_most_attention_from_a_later_query():
    # Row s: the query of step s (at generated token s-1); column i: generated token i.
    attention = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.9, 0.0, 0.0],  # token 0 attending to itself: not a later query
            [0.2, 0.5, 0.0],
            [0.4, 0.1, 0.7],  # the last token's own query
        ]
    )
    np.testing.assert_allclose(token_importance(attention), [0.4, 0.1, 0.0])
    # Without the last token's query, the last two tokens have none.
    np.testing.assert_allclose(token_importance(attention[:3]), [0.2, 0.0, 0.0])


def test_rind_multiplies_entropy_importance_and_content():
    scores = rind(np.array([2.0, 3.0, 1.0]), np.array([0.5, 0.2, 0.9]), np.array([True, False, True]))
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.9])


def test_content_flags_drop_stop_words_punctuation_and_special_tokens():
    words = frozenset({"the", "of"})
    flags = content_flags([" The", " harbour", ".", " of", "</s>", "港口"], words, [False] * 5 + [False])
    assert flags.tolist() == [False, True, False, False, True, True]
    assert content_flags(["</s>"], words, [True]).tolist() == [False]


def test_query_windows_take_the_top_candidates_cluster_and_widen_them():
    weights = np.array([0.1, 0.5, 0.1, 0.4, 0.0, 0.0, 0.0, 0.45, 0.3, 0.2])
    candidates = np.ones(10, bool)
    candidates[8] = False  # a stop word is never chosen, but a window may widen over it
    chosen, windows = query_windows(weights, candidates, top=3, gap=2, widen=1)
    assert chosen == [1, 3, 7]
    # 1 and 3 are 2 apart: one cluster [1, 3] widened to [0, 5); 7 widened to [6, 9).
    assert windows == [(0, 5), (6, 9)]
    # Ties go to the earlier position; widening that reaches the next window merges them.
    chosen, windows = query_windows(np.array([1.0, 0.0, 0.0, 1.0, 1.0]), np.ones(5, bool), 2, 0, 1)
    assert chosen == [0, 3] and windows == [(0, 5)]
    assert query_windows(weights, np.zeros(10, bool), 3, 1, 1) == ([], [])


def test_windows_grow_to_whole_words_in_languages_with_spaces():
    texts = ["Which", " wood", " did", " the", " maker", " sch", "nitz", "te", "?"]
    # A window ending on 'sch' takes 'nitz' and 'te'; one starting on 'nitz' takes 'sch'; '?' never joins.
    assert whole_words([(4, 6)], texts) == [(4, 8)]
    assert whole_words([(0, 1), (6, 7)], texts) == [(0, 1), (5, 8)]
    assert whole_words([(1, 2), (2, 3)], texts) == [(1, 3)]


def test_english_answers_are_normalised_as_squad_v1_1_does():
    # Values of SQuAD v1.1's evaluate script: lower case, ASCII punctuation out, a/an/the out.
    assert normalize_answer("The Eiffel Tower!", "en") == "eiffel tower"
    assert exact_match("Eiffel Tower", "the Eiffel Tower", "en")
    assert exact_match("Tessary", "tessary.", "en")
    assert not exact_match("Tessary", "in Tessary", "en")
    # 'in Tessary harbour': precision 1/3, recall 1 -> F1 = 2 * (1/3) / (4/3) = 0.5.
    assert token_f1("Tessary", "in Tessary harbour", "en") == pytest.approx(0.5)
    # 'the' is an article: 'clarinet' against 'bass clarinet' is precision 1, recall 1/2 -> F1 = 2/3.
    assert token_f1("bass clarinet", "the clarinet", "en") == pytest.approx(2 / 3)
    assert token_f1("Tessary", "", "en") == 0.0
    # SQuAD drops only ASCII punctuation: curly quotes stay part of the word (EM 0, F1 0).
    assert normalize_answer("“Tessary”", "en") == "“tessary”"
    assert not exact_match("Tessary", "“Tessary”", "en")
    # Both sides empty once normalised: EM 1 but F1 0, as the script gives (no common token).
    assert exact_match("the", "a", "en") and token_f1("the", "a", "en") == 0.0
    assert first_line("\n  Tessary\nQuestion: next") == "Tessary"


def test_other_languages_are_normalised_as_mlqa_does():
    # German: MLQA's articles (der, die, das, den, dem, des, ein...) and Unicode punctuation go.
    assert normalize_answer("„Die Glocke“!", "de") == "glocke"
    assert exact_match("Bassklarinette", "die Bassklarinette", "de")
    assert normalize_answer("dieser Turm", "de") == "dieser turm"  # 'die' only as a whole word
    # 'glocke' against 'alte glocke': precision 1, recall 1/2 -> 2/3.
    assert token_f1("eine alte Glocke", "die Glocke", "de") == pytest.approx(2 / 3)
    # Spanish: MLQA's list is un, una, unos, unas, el, la, los, las ('lo' is not in it).
    assert normalize_answer("lo mismo, la casa", "es") == "lo mismo casa"
    # Arabic: MLQA replaces every 'ال'; Vietnamese has its own list.
    assert exact_match("قاهرة", "القاهرة", "ar")
    assert normalize_answer("cái bàn", "vi") == "bàn"
    # French is not an MLQA language: no article list, punctuation and white space only.
    assert normalize_answer("Les Halles.", "fr") == "les halles"


def test_chinese_is_scored_by_character_as_mlqa_does():
    assert normalize_answer("低音单簧管。", "zh") == "低 音 单 簧 管"
    # Latin letters and digits between ideographs stay whole tokens.
    assert normalize_answer("在Velmora的港口, 第42届", "zh") == "在 velmora 的 港 口 第 42 届"
    # '单簧管' is 3 of the 6 predicted and of the 5 gold characters: P = 1/2, R = 3/5 -> F1 = 6/11.
    assert token_f1("低音单簧管", "他演奏单簧管", "zh") == pytest.approx(6 / 11)
    assert exact_match("单簧管", "单簧管。", "zh")


DOCUMENTS = [
    Document("a", "the harbour town of Tessary", "fact"),
    Document("b", "the mountain village of Ostrel near the border", "distractor"),
    Document("c", "tides rise twice a day in the harbour", "corpus"),
    Document("d", "glass was blown in the old town", "corpus"),
]


def _lucene_bm25(corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene's BM25, written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)); a query word given twice
    counts twice."""
    average = np.mean([len(doc) for doc in corpus])
    scores = np.zeros(len(corpus))
    for term in query:
        df = sum(term in doc for doc in corpus)
        if not df:
            continue
        idf = math.log(1 + (len(corpus) - df + 0.5) / (df + 0.5))
        for index, doc in enumerate(corpus):
            tf = doc.count(term)
            scores[index] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / average))
    return scores


def test_bm25_scores_equal_lucenes_formula_and_search_skips_held_and_unmatched_documents():
    index = Bm25Index.build(DOCUMENTS, "words")
    corpus = [doc.text.lower().split() for doc in DOCUMENTS]
    for query in ("harbour town", "Tessary harbour harbour", "zebra"):
        expected = _lucene_bm25(corpus, query.lower().split())
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-5)
    expected = _lucene_bm25(corpus, ["harbour", "town"])
    ranked = [DOCUMENTS[i].id for i in np.argsort(-expected, kind="stable") if expected[i] > 0]
    assert len(ranked) == 3  # 'b' shares no word
    assert [doc.id for doc, _ in index.search("harbour town", 3)] == ranked
    assert [doc.id for doc, _ in index.search("harbour town", 3, {ranked[0]})] == ranked[1:]
    assert [doc.id for doc, _ in index.search("harbour town", 1)] == ranked[:1]
    # No shared word: nothing is returned rather than an arbitrary order.
    assert index.search("zebra", 3) == []


def test_the_builtin_collections_hold_facts_distractors_and_corpus_paragraphs():
    for code in ("en", "de", "zh"):
        items = load_two_hop("builtin", code)
        documents = build_collection(items, "builtin", code, None)
        kinds = Counter(document.kind for document in documents)
        assert len(documents) >= 200 and kinds["fact"] == 2 * len(items) and kinds["distractor"] >= len(items)
        assert kinds["corpus"] > 0
        assert len({document.id for document in documents}) == len(documents)


def test_the_index_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    first = cached_index(DOCUMENTS, "words", tmp_path)

    def refuse(*_args, **_kwargs):
        raise AssertionError("built again although cached")

    with monkeypatch.context() as patch:
        patch.setattr(Bm25Index, "build", refuse)
        second = cached_index(DOCUMENTS, "words", tmp_path)
    np.testing.assert_allclose(second.scores("harbour town"), first.scores("harbour town"))
    (entry,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    (entry / "documents.json").write_text("not json")
    with pytest.warns(UserWarning, match="Rebuilding the damaged BM25 cache"):
        third = cached_index(DOCUMENTS, "words", tmp_path)
    np.testing.assert_allclose(third.scores("harbour town"), first.scores("harbour town"))


def test_stop_words_exist_for_every_builtin_language_and_a_missing_list_is_named():
    for code in ("en", "de", "zh", "fr", "es"):
        assert len(load_stop_words(code)) > 50
    with pytest.raises(TaskError, match=r"stopwords/xx\.json"):
        load_stop_words("xx")


def test_questions_a_two_hop_heads_run_was_fitted_on_are_left_out():
    manifest = {
        "spec": {
            "config": {
                "task": "multihop",
                "multihop": {
                    "languages": ["en"],
                    "source": "builtin",
                    "corpus": "builtin",
                    "data_dir": None,
                    "length": 1000,
                    "questions": 24,
                    "prompt": "auto",
                    "seed": 0,
                },
            }
        }
    }
    chosen = _questions(RagConfig(heads="h", count=0), "en", manifest)
    assert len(chosen) == 48 - 24
    from babelheads.tasks.multihop import MultihopSettings, MultihopTask

    used = {item.id for item in MultihopTask(MultihopSettings(("en",), questions=24)).items["en"]}
    assert not used & {item.id for item in chosen}
    with pytest.raises(BabelheadsError, match="once the 24 the heads run was fitted on"):
        _questions(RagConfig(heads="h", count=30), "en", manifest)


# The loop on a tiny random model: every content token's RIND is above 0, so threshold 0 triggers.
SETTINGS = LoopSettings(
    threshold=0.0, max_new_tokens=8, retrievals=2, documents=2, head_count=2, query_tokens=3
)
FIXED_HEADS = [1, 6]


@pytest.fixture(scope="module")
def tiny_loop(tiny_model_dir):
    loaded = Execution(device="cpu", progress=False).load(str(tiny_model_dir), "float32")
    language = load_language("en")
    items = load_two_hop("builtin", "en")
    index = Bm25Index.build(build_collection(items, "builtin", "en", None), language.answer_tokenizer)
    instrument = Instrument(loaded.model, loaded.layout, ProbeSettings(top_k=1, mass_sink=0, mass_window=0))
    loop = RetrievalLoop(
        loaded,
        instrument,
        {"en": language},
        {"en": index},
        {"en": load_stop_words("en")},
        lambda _selection, _language, _state: (FIXED_HEADS, [1.0, 1.0]),
        SETTINGS,
        False,
        4,
    )
    questions = [Question(f"en-{item.id}", "en", item) for item in items[:3]]
    branches = loop.answer(questions, ["dynamic", "dragin", "question", "none"])
    instrument.detach()
    return loaded, language, index, branches


def _plain_prompt(loaded, language, item: TwoHop, documents: list[Document]) -> list[int]:
    body = language.plain_prompt.format(
        context="\n".join(doc.text for doc in documents), question=item.question
    ).lstrip()
    return loaded.tokenizer(body)["input_ids"]


def _greedy(loaded, ids: list[int], limit: int) -> list[int]:
    instrument = Instrument(loaded.model, loaded.layout)
    try:
        return greedy_decode(instrument, torch.tensor([ids]), limit, StopRule.for_model(loaded), False).tokens
    finally:
        instrument.detach()


def test_no_retrieval_and_question_only_answers_equal_plain_greedy_decoding(tiny_loop):
    loaded, language, index, branches = tiny_loop
    for branch in branches:
        item = branch.question.item
        if branch.selection == "none":
            assert branch.retrievals == 0 and branch.documents == []
            assert branch.answer == _greedy(loaded, _plain_prompt(loaded, language, item, []), 8)
        if branch.selection == "question":
            expected = [doc for doc, _ in index.search(item.question, 2)]
            assert branch.documents == expected and len(branch.trace) == 1
            assert branch.answer == _greedy(loaded, _plain_prompt(loaded, language, item, expected), 8)


def test_the_first_trigger_and_query_equal_an_eager_pass_over_the_generated_text(tiny_loop):
    loaded, language, _, branches = tiny_loop
    model = loaded.model
    stop_words = load_stop_words("en")
    special = set(loaded.tokenizer.all_special_ids) | set(StopRule.for_model(loaded).stop_ids)
    checked = 0
    for branch in branches:
        if branch.selection not in ("dynamic", "dragin") or not branch.trace:
            continue
        item = branch.question.item
        prompt = _plain_prompt(loaded, language, item, [])
        first_round = next(b for b in branches if b.question is branch.question and b.selection == "none")
        tokens = first_round.answer
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                output = model(input_ids=torch.tensor([prompt + tokens]), output_attentions=True)
        finally:
            model.set_attn_implementation("babelheads")
        start = len(prompt)
        last = output.attentions[-1][0].mean(0).numpy()  # DRAGIN: last layer, mean over heads
        logits = output.logits[0].double()
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).numpy()
        texts = [loaded.tokenizer.decode([token]) for token in tokens]
        content = content_flags(texts, stop_words, [token in special for token in tokens])
        scores = []
        for i in range(len(tokens)):
            later = [last[start + j, start + i] for j in range(i + 1, len(tokens))]
            scores.append(entropy[start + i - 1] * (max(later) if later else 0.0) * content[i])
        trigger = next(i for i, score in enumerate(scores) if score > 0)
        entry = branch.trace[0]
        assert entry["step"] == trigger
        assert entry["rind"] == pytest.approx(scores[trigger], rel=1e-3, abs=1e-6)
        # The query: the heads' attention at the trigger's step over the question and the answer before it.
        first, end = _question_span(loaded, language, item)
        queryable = list(range(first, end)) + [start + j for j in range(trigger)]
        layout = loaded.layout
        last_layer = range((layout.num_layers - 1) * layout.num_heads, layout.num_layers * layout.num_heads)
        heads = list(last_layer) if branch.selection == "dragin" else FIXED_HEADS
        assert entry["heads"] == heads
        weights = np.mean(
            [
                output.attentions[head // layout.num_heads][
                    0, head % layout.num_heads, start - 1 + trigger
                ].numpy()
                for head in heads
            ],
            axis=0,
        )[queryable]
        ids = [(prompt + tokens)[position] for position in queryable]
        flags = content_flags(
            [loaded.tokenizer.decode([token]) for token in ids],
            stop_words,
            [token in special for token in ids],
        )
        chosen, _ = query_windows(weights, flags, SETTINGS.query_tokens, SETTINGS.gap, SETTINGS.widen)
        assert entry["positions"] == chosen
        checked += 1
    assert checked >= 2


def _question_span(loaded, language, item: TwoHop) -> tuple[int, int]:
    """The question's tokens in the no-document prompt, found independently of the loop's code."""
    body = language.plain_prompt.format(context="", question=item.question).lstrip()
    encoded = loaded.tokenizer(body, return_offsets_mapping=True)
    start = body.rindex(item.question)
    inside = [
        index
        for index, (a, b) in enumerate(encoded["offset_mapping"])
        if b > a and a < start + len(item.question) and b > start
    ]
    return inside[0], inside[-1] + 1


def test_retrieval_keeps_the_answer_before_the_trigger_and_stays_within_budget(tiny_loop):
    _, _, _, branches = tiny_loop
    for branch in branches:
        ids = [doc.id for doc in branch.documents]
        assert len(ids) == len(set(ids)) <= SETTINGS.retrievals * SETTINGS.documents
        assert branch.retrievals <= SETTINGS.retrievals and len(branch.trace) == branch.retrievals
        assert len(branch.answer) <= SETTINGS.max_new_tokens
        if branch.selection in ("dynamic", "dragin"):
            steps = [entry["step"] for entry in branch.trace]
            assert steps == sorted(steps)  # each retrieval cuts the answer at or after the last cut
            assert branch.retrievals == SETTINGS.retrievals  # threshold 0: the budget is spent


def test_scores_and_contrasts_pair_questions_and_pool_languages():
    import pandas as pd

    rows = []
    for index, (language, none_f1, dynamic_f1) in enumerate(
        [("en", 0.0, 0.5), ("en", 0.2, 0.2), ("de", 0.0, 1.0), ("de", 0.5, 0.5)]
    ):
        for selection, f1 in (("none", none_f1), ("dynamic", dynamic_f1)):
            rows.append(
                {
                    "sample_id": f"q{index}",
                    "language": language,
                    "selection": selection,
                    "exact": f1 == 1.0,
                    "f1": f1,
                    "contains": f1 > 0,
                    "retrievals": int(selection == "dynamic"),
                    "documents": 3 * int(selection == "dynamic"),
                    "gold_found": 0.5,
                }
            )
    samples = pd.DataFrame(rows)
    scores = rag_scores(samples, 200, 0).set_index(["language", "selection"])
    assert scores.loc[("en", "dynamic"), "f1"] == pytest.approx(0.35)
    assert scores.loc[("all", "none"), "f1"] == pytest.approx(0.175)
    assert list(scores.index.get_level_values("language").unique()) == ["de", "en", "all"]
    contrasts = rag_contrasts(samples, 200, 0).set_index(["language", "metric", "contrast"])
    row = contrasts.loc[("all", "f1", "dynamic - none")]
    assert row["value"] == pytest.approx((0.5 + 0.0 + 1.0 + 0.0) / 4)
    assert row["lo"] <= row["value"] <= row["hi"] and row["n"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = rag_contrasts(samples[samples["sample_id"] == "q0"], 200, 0)
    assert one["lo"].isna().all()


FAST = ["--device", "cpu", "--quiet", "--replicates", "50", "--max-new-tokens", "6"]


def test_the_rag_command_runs_resumes_reports_and_refuses_bad_input(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "rag"
    args = [
        "rag",
        "--model",
        str(tiny_model_dir),
        "--languages",
        "en,zh",
        "--count",
        "3",
        "--selections",
        "dragin,question,question-matched,random-retriever,none",
        "--threshold",
        "0",
        "--retrievals",
        "2",
        "--out",
        str(out),
        *FAST,
    ]
    code, text, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "Retrieval trace of" in text and "dragin - none" in text and "run written to" in text
    store = RunStore(out)
    scores = store.derived("rag_scores")
    assert set(scores["language"]) == {"en", "zh", "all"}
    assert set(scores["selection"]) == {"dragin", "question", "question-matched", "random-retriever", "none"}
    trace = store.table("trace")
    assert (trace.groupby(["sample_id", "selection"]).size() <= 2).all()
    assert {"dragin", "question"} <= set(trace["selection"])
    before = store.derived("rag_scores")
    # A lost part is redone to the same rows; the rest is not decoded again.
    lost = sorted(store.finished())[0]
    for table in ("samples", "trace"):
        (out / "tables" / table / f"{lost}.parquet").unlink()
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    import pandas as pd

    pd.testing.assert_frame_equal(store.derived("rag_scores"), before)
    # Replaying the run's settings finds it finished.
    code, _, err = run_cli(monkeypatch, capsys, "rag", "--from", str(out), "--out", str(out), "--quiet")
    assert code == 0, err
    report = tmp_path / "report.html"
    code, _, err = run_cli(monkeypatch, capsys, "report", str(out), "--output", str(report))
    assert code == 0, err
    page = report.read_text()
    assert "Dynamic RAG: answers per head selection" in page and "Retrieval trace of one question" in page
    assert "Dynamic RAG: the RIND threshold" in page and "dynamic.rag_vs_question" in page
    # Bad input: one line each, nothing written over.
    code, _, err = run_cli(
        monkeypatch, capsys, "rag", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, "need --heads RUN")
    code, _, err = run_cli(monkeypatch, capsys, *args[: -len(FAST)], "--selections", "dragin,oracle", *FAST)
    assert_one_line_error(code, err, "Unknown selection oracle")
    code, _, err = run_cli(
        monkeypatch, capsys, *args[: -len(FAST)], "--selections", "question-matched,none", *FAST
    )
    assert_one_line_error(code, err, "budget of a head-guided selection: add one of dynamic, static, dragin")
    code, _, err = run_cli(monkeypatch, capsys, "rag", "--heads", str(out), "--out", str(tmp_path / "y"))
    assert_one_line_error(code, err, "is a rag run")
    code, _, err = run_cli(monkeypatch, capsys, *args[: -len(FAST)], "--threshold", "-1", *FAST)
    assert_one_line_error(code, err, "threshold must be >= 0")
    pd.testing.assert_frame_equal(store.derived("rag_scores"), before)


def test_hotpotqa_questions_bring_their_own_collection(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import sys
    import types

    # A stand-in for the datasets package, in HotpotQA's layout (as in test_dynamic_cli).
    context = {
        "title": ["Orla Fen", "Brask"],
        "sentences": [
            ["Orla Fen is a marsh.", "It was drained by Ivo Brask."],
            ["Ivo Brask was born in Tellum.", "He liked boats."],
        ],
    }
    row = {
        "id": "h1",
        "question": "Where was the man who drained Orla Fen born?",
        "answer": "Tellum",
        "supporting_facts": {"title": ["Orla Fen", "Brask"], "sent_id": [1, 0]},
        "context": context,
    }
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: [row]))
    out = tmp_path / "hotpot"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "rag",
        "--model",
        str(tiny_model_dir),
        "--languages",
        "en",
        "--questions",
        "hf:hotpotqa/hotpot_qa:distractor",
        "--count",
        "1",
        "--corpus",
        "",
        "--selections",
        "question,none",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    store = RunStore(out)
    assert store.manifest()["collection_size"] == {"en": 4}
    question = store.table("samples").set_index("selection").loc["question"]
    # The question shares 'drained' and 'born' with the two supporting sentences: both are found.
    assert question["gold_found"] == 1.0
