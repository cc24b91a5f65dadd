"""The runner's stop rule and protocol, exact attention for softcap and sinks, tasks and their data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli_and_runs import assert_one_line_error, detect_args, run_cli
from tiny_models import tiny_model

from babelheads.analysis.aggregate import AggregateSettings, aggregate
from babelheads.data.needles import parse_needles
from babelheads.data.problems import load_problems
from babelheads.errors import TaskError
from babelheads.models import describe_heads
from babelheads.official import official_name, read_official
from babelheads.probe import Instrument
from babelheads.probe.eager import eager_attention
from babelheads.runner import StopRule, greedy_decode
from babelheads.runs import RunStore
from babelheads.tasks.base import safe_id
from babelheads.tasks.cot import extract_number

# --- stops --------------------------------------------------------------------------------------------

RULE = StopRule(stop_ids=frozenset({1, 2}), blank_newlines=frozenset({10}), text_newlines=frozenset({11}))


def test_every_eos_id_stops_and_a_first_token_with_text_and_a_newline_ends_the_answer():
    assert RULE.ends(1, False) == (True, True) and RULE.ends(2, True)[0]
    assert RULE.ends(10, False) == (False, False), "a blank line before the answer is skipped"
    assert RULE.ends(10, True) == (True, True), "a blank line after it ends the answer"
    assert RULE.ends(11, False) == (True, True), "'42\\n' as the first token is a one-token answer"
    assert RULE.ends(5, False) == (False, True)


def test_stop_rule_reads_the_generation_config_list_and_end_of_turn_tokens(tiny_model_dir):
    from babelheads.models import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    loaded.model.generation_config.eos_token_id = [1, 7]
    rule = StopRule.for_model(loaded)
    assert {1, 7} <= rule.stop_ids
    newline = loaded.tokenizer.convert_tokens_to_ids("Ċ")
    assert newline in rule.blank_newlines


def _prompt_ids() -> torch.Tensor:
    return torch.randint(3, 500, (1, 30), generator=torch.Generator().manual_seed(3))


def test_decoding_stops_at_a_stop_token_of_the_list():
    model = tiny_model("llama")
    instrument = Instrument(model, describe_heads(model))
    ids = _prompt_ids()
    free = greedy_decode(instrument, ids, 6, record=False).tokens
    stopped = greedy_decode(instrument, ids, 6, StopRule(stop_ids=frozenset({free[2]})), record=False).tokens
    assert stopped == free[: free.index(free[2]) + 1]
    assert instrument.positions is None, "the positions are reset after every sample"


# --- exact attention for what sdpa cannot take ------------------------------------------------------


def test_gemma2_soft_capping_reaches_the_recorder():
    """Without the softcap branch the recorded weights would be those of uncapped logits."""
    model = tiny_model("gemma2")
    ids = _prompt_ids()
    instrument = Instrument(model, describe_heads(model))
    capped = greedy_decode(instrument, ids, 2).records
    softcap = model.config.attn_logit_softcapping
    model.config.attn_logit_softcapping = None
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    uncapped = greedy_decode(instrument, ids, 1).records
    assert not np.allclose(capped.weights[0], uncapped.weights[0])
    assert softcap == 5.0


def test_sink_logits_take_their_share_as_gpt_oss_eager_computes_them():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 5, 8, generator=generator)
    key = torch.randn(1, 2, 5, 8, generator=generator)
    value = torch.randn(1, 2, 5, 8, generator=generator)
    sinks = torch.randn(4, generator=generator)
    causal = torch.ones(5, 5, dtype=torch.bool).tril().view(1, 1, 5, 5)
    ours = eager_attention(query, key, value, causal, 8**-0.5, sinks=sinks)
    keys, values = key.repeat_interleave(2, 1), value.repeat_interleave(2, 1)
    logits = (query @ keys.transpose(-1, -2)) * 8**-0.5
    logits = logits.masked_fill(~causal, float("-inf"))
    combined = torch.cat([logits, sinks.view(1, 4, 1, 1).expand(1, 4, 5, 1)], dim=-1)
    weights = torch.softmax(combined, dim=-1)[..., :-1]
    torch.testing.assert_close(ours, (weights @ values).transpose(1, 2), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(ours, eager_attention(query, key, value, causal, 8**-0.5))


# --- needles, ids, official files ---------------------------------------------------------------------


def test_an_answer_that_occurs_twice_is_refused_unless_answer_start_says_which(tmp_path):
    statement = "The code is 47 and the spare code is 47 too."
    path = tmp_path / "needles.json"
    path.write_text(
        json.dumps([{"id": "twice", "statement": statement, "question": "Code?", "answer": "47"}])
    )
    with pytest.raises(TaskError, match=r"occurs more than once.*answer_start"):
        parse_needles(path)
    second = statement.rindex("47")
    path.write_text(
        json.dumps(
            [{"id": "twice", "statement": statement, "question": "?", "answer": "47", "answer_start": second}]
        )
    )
    assert parse_needles(path)[0].answer_offset == second
    path.write_text(
        json.dumps(
            [{"id": "twice", "statement": statement, "question": "?", "answer": "47", "answer_start": 3}]
        )
    )
    with pytest.raises(TaskError, match="does not point at its answer"):
        parse_needles(path)


def test_sample_ids_are_portable_file_names():
    assert safe_id("en-L1000-D0.500-key") == "en-L1000-D0.500-key"
    unsafe = safe_id("en>zh-L1000-D0.5-a/b:c")
    assert all(char.isalnum() or char in "._-" for char in unsafe)
    assert safe_id("a/b") != safe_id("a:b")


def test_official_files_name_their_variant_and_read_back(tmp_path):
    path = tmp_path / official_name("en", "paper")
    path.write_text(json.dumps({"0-1": [0.5, 1.0], "2-3": [0.0, 0.0]}))
    frame = read_official(path)
    assert path.name == "retrieval_scores.en.paper.json"
    assert frame["variant"].unique().tolist() == ["paper"]
    assert frame.loc[(frame["layer"] == 0) & (frame["head"] == 1), "score"].item() == 0.75
    authors = tmp_path / "Qwen.json"
    authors.write_text(json.dumps({"1-1": [1.65]}))
    assert read_official(authors)["variant"].item() == "official"


# --- aggregation as an analysis setting ---------------------------------------------------------------


def _tables():
    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "language": ["en", "en", "de"],
            "status": "ok",
            "rouge1_recall": [1.0, 0.4, 0.0],
            "success": [True, False, False],
        }
    )
    rows = []
    for sample_id, language, values in (
        ("a", "en", (1.0, 2.0)),
        ("b", "en", (0.5, 0.5)),
        ("c", "de", (0.2, 0.2)),
    ):
        for head, (paper, official) in enumerate([values, (0.0, 0.0)]):
            rows.append(
                {
                    "sample_id": sample_id,
                    "language": language,
                    "layer": 0,
                    "head": head,
                    "kv_head": 0,
                    "paper": paper,
                    "official": official,
                    "needle_attention": 0.5,
                }
            )
    return samples, pd.DataFrame(rows)


def test_aggregation_follows_variant_samples_and_threshold_and_gives_nan_not_zero():
    samples, heads = _tables()
    with pytest.warns(UserWarning, match="de: 0 successful samples"):
        scores, kv, _ = aggregate(samples, heads, AggregateSettings())
    en = scores[scores["language"] == "en"].set_index("head")
    assert en.loc[0, "score"] == 1.0 and en.loc[0, "samples_used"] == 1
    assert scores.loc[scores["language"] == "de", "score"].isna().all()
    assert kv.loc[kv["language"] == "en", "score"].item() == 1.0  # max over the KV group
    official = aggregate(samples, heads, AggregateSettings(score="official"))[0]
    assert official.loc[(official["language"] == "en") & (official["head"] == 0), "score"].item() == 2.0
    everything = aggregate(samples, heads, AggregateSettings(score_on="all"))[0]
    assert (
        everything.loc[(everything["language"] == "en") & (everything["head"] == 0), "score"].item() == 0.75
    )
    lower = aggregate(samples, heads, AggregateSettings(success_threshold=0.3))[0]
    assert lower.loc[(lower["language"] == "en") & (lower["head"] == 0), "samples_used"].item() == 2


# --- word problems -----------------------------------------------------------------------------------


def test_word_problems_are_parallel_with_numeric_answers():
    sets = {code: load_problems(code) for code in ("en", "de", "zh")}
    reference = [(problem.id, problem.answer) for problem in sets["en"].problems]
    assert len(reference) >= 30
    for problem_set in sets.values():
        assert [(problem.id, problem.answer) for problem in problem_set.problems] == reference
        assert problem_set.answer_marker in problem_set.cot_prompt


@pytest.mark.parametrize(
    ("output", "marker", "expected"),
    [
        (" She has 24 - 7 = 17 apples. The answer is 17.", "The answer is", (17, "marker")),
        (" The answer is 1,250.", "The answer is", (1250, "marker")),
        (" 3 + 4 = 7, so 7", "The answer is", (7, "last")),
        (" 共有 5 × 3 = 15 个。答案是15。", "答案是", (15, "marker")),
        (" keine Ahnung", "Die Antwort ist", (None, "none")),
    ],
)
def test_numeric_answers_are_extracted_after_the_marker_or_last(output, marker, expected):
    assert extract_number(output, marker) == expected


def test_cot_ablation_runs_through_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    detection = tmp_path / "detect"
    args = [*detect_args(tiny_model_dir, detection), "--languages", "en", "--score-on", "all"]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    out = tmp_path / "cot"
    common = ["ablate", str(detection), "--task", "cot", "--problems", "2", "--quiet", "--k", "1"]
    code, stdout, err = run_cli(
        monkeypatch, capsys, *common, "--out", str(out), "--head-sets", "random", "--random-seeds", "1"
    )
    assert code == 0, err
    assert "task cot" in stdout
    store = RunStore(out)
    table = store.derived("ablation")
    assert set(table["language"]) == {"en/cot", "en/direct"}
    assert (table["task"] == "cot").all() and table["delta_rouge"].isna().all()
    samples = store.table("samples")
    assert len(samples) == 2 * 2 * 2  # problems x modes x (none, random)
    assert set(samples["extracted_by"]) <= {"marker", "last", "none"}
    # The random tiny model copies nothing, so no head can be a top retrieval head.
    code, _, err = run_cli(monkeypatch, capsys, *common, "--out", str(tmp_path / "top"), "--head-sets", "top")
    assert_one_line_error(code, err, r"Only 0 heads have a mean retrieval score >= 0.1")


def test_a_reasoning_chain_runs_over_line_breaks_and_stops_at_end_of_turn_or_the_next_question():
    from babelheads.runner.stops import StopRule
    from babelheads.tasks.base import Stop

    letters = {10: "\n", 11: "7\n"}
    rule = StopRule(
        frozenset({0}),
        frozenset({10}),
        frozenset({11}),
        lambda ids: "".join(letters.get(i, chr(i)) for i in ids),
    )
    assert rule.ends(11, True) == (True, True) and rule.ends(10, True) == (True, True)  # a short answer
    chain = Stop(True, ("Question:",))
    assert rule.ends(11, True, chain, [11]) == (False, True) and rule.ends(10, True, chain, [10]) == (
        False,
        True,
    )
    assert rule.ends(0, True, chain, [0]) == (True, True)  # end of turn
    text = [ord(c) for c in "Step 1.\nThe answer is 7.\n\nQuestion:"]
    assert rule.ends(text[-1], True, chain, text) == (True, True)
    assert rule.ends(text[-2], True, chain, text[:-1]) == (False, True)  # 'Question' alone is not it


def test_cot_reads_the_number_after_the_marker_before_the_next_question():
    from babelheads.tasks.base import Sample
    from babelheads.tasks.cot import CotSettings, CotTask

    task = CotTask(CotSettings(languages=("en", "de"), problems=1))
    for code, marker, label in (("en", "The answer is", "Question:"), ("de", "Die Antwort ist", "Frage:")):
        sample = Sample("s", f"{code}/cot", (1,), "7", meta={"source_language": code, "mode": "cot"})
        output = f"2 + 5 = 7.\n3 + 4 = 7.\n{marker} 7.\n\n{label} Tom has 9 apples.\n9 - 1 = 8. {marker} 8."
        assert task.score(sample, output) == {"predicted": "7", "extracted_by": "marker", "success": True}
        # no marker: the last number, flagged
        assert task.score(sample, "2 + 5 = 7")["extracted_by"] == "last"
