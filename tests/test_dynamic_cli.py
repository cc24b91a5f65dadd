"""The dynamic-heads commands end to end on a tiny local model, the two-hop and magic-word data, the
report, and bad input."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from test_cli_and_runs import assert_one_line_error, run_cli

from babelheads.data.multihop import load_two_hop
from babelheads.data.needles import load_needles
from babelheads.runs import RunStore
from babelheads.tasks.multihop import MultihopSettings, MultihopTask
from babelheads.tasks.niah import NiahSettings, NiahTask

FAST = [
    "--quiet",
    "--device",
    "cpu",
    "--replicates",
    "50",
    "--epochs",
    "2",
    "--lags",
    "0,1",
    "--shuffles",
    "1",
]


def test_dynamic_niah_writes_statistics_probes_and_hidden_states(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = ["dynamic", "--model", str(tiny_model_dir), "--lengths", "1200", "--depths", "0.3,0.7"]
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        *args,
        "--needles-per-cell",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    assert "CCA top-1" in stdout and "run written to" in stdout
    store = RunStore(out)
    assert len(store.table("hidden")) == int(store.table("samples")["steps"].sum())
    assert {"needle_copy", "needle_match_weight", "peak_token"} <= set(store.table("events").columns)
    for name in ("dynamic_stats", "static_heads", "cca", "probe"):
        assert store.has_derived(name)
    # Replaying the run's settings finds it finished: nothing is decoded again.
    code, _, err = run_cli(monkeypatch, capsys, "dynamic", "--from", str(out), "--out", str(out), *FAST)
    assert code == 0, err
    # The statistics of the same run, recomputed from its events alone.
    code, _, err = run_cli(
        monkeypatch, capsys, "dynamic-stats", str(out), "--static-k", "2", "--replicates", "50"
    )
    assert code == 0, err
    # The random model answers nothing right, so no head ranking exists to ablate against: refused, not
    # ranked arbitrarily. The ablation command runs end to end on the copying model (test_dynamic_runs).
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "dynamic-ablate",
        "--heads",
        str(out),
        "--languages",
        "en",
        "--out",
        str(tmp_path / "a"),
    )
    assert_one_line_error(code, err, "has no head ranking for en")
    report = tmp_path / "report.html"
    code, _, err = run_cli(monkeypatch, capsys, "report", str(out), "--output", str(report))
    assert code == 0, err
    html = report.read_text()
    assert "Dynamic retrieval heads run" in html
    assert "Predicting heads from hidden states" in html


def test_dynamic_multihop_records_eq2_masses_and_fits_the_regressor(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        "dynamic",
        "--task",
        "multihop",
        "--count",
        "5",
        "--model",
        str(tiny_model_dir),
        "--lengths",
        "1200",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    events = RunStore(out).table("events")
    assert {"mass_context", "mass_support"} <= set(events.columns)
    assert ((events["mass_context"] + events["mass_support"]) <= 1 + 1e-5).all()
    assert RunStore(out).has_derived("regression") and "Eq. 2 regressor" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "dynamic", "--from", str(out), "--out", str(out), *FAST)
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["dynamic", "--task", "tree"], "Unknown task 'tree'"),
        (["dynamic", "--task", "multihop", "--lengths", "1000,2000"], "one --lengths value"),
        (["dynamic", "--span", "middle"], "span must be one of"),
        (["dynamic", "--epochs", "0"], "--epochs, --shuffles"),
        (["dynamic", "--lags", "-1"], "--lags must be >= 0"),
        (
            ["dynamic", "--task", "multihop", "--languages", "fr"],
            "No built-in two-hop questions for language 'fr'",
        ),
    ],
)
def test_bad_input_gets_one_line(args, pattern, monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "x"), "--quiet")
    assert_one_line_error(code, err, pattern)


def test_dynamic_ablation_refuses_the_heads_runs_own_seed(tmp_path, monkeypatch, capsys):
    run = tmp_path / "heads"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps({"spec": {"kind": "dynamic", "model": {"model": "m"}}, "seed": 1})
    )
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "dynamic-ablate",
        "--heads",
        str(run),
        "--seed",
        "1",
        "--out",
        str(tmp_path / "a"),
    )
    assert_one_line_error(code, err, "Use another --seed")


def test_an_unfinished_heads_run_is_refused(tmp_path, monkeypatch, capsys):
    run = tmp_path / "heads"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps({"spec": {"kind": "detect", "model": {"model": "m"}}, "seed": 0})
    )
    code, _, err = run_cli(
        monkeypatch, capsys, "dynamic-ablate", "--heads", str(run), "--out", str(tmp_path / "a")
    )
    assert_one_line_error(code, err, "is not finished")
    code, _, err = run_cli(monkeypatch, capsys, "dynamic-stats", str(run))
    assert_one_line_error(code, err, "is not finished")


def test_two_hop_data_is_parallel_and_every_answer_sits_once_in_its_last_fact():
    sets = {code: load_two_hop("builtin", code) for code in ("en", "de", "zh")}
    ids = [item.id for item in sets["en"]]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    for items in sets.values():
        assert [item.id for item in items] == ids
        for item in items:
            assert len(item.facts) == 2 and item.facts[1].count(item.answer) == 1
            assert item.answer not in item.facts[0] and item.answer not in item.question
            assert all(item.answer not in distractor for distractor in item.distractors)


def test_two_hop_samples_mark_both_facts_the_answer_and_the_context(tiny_tokenizer_session):
    from types import SimpleNamespace

    loaded = SimpleNamespace(
        tokenizer=tiny_tokenizer_session, is_chat=False, layout=SimpleNamespace(max_positions=None)
    )
    task = MultihopTask(MultihopSettings(("en", "zh"), length=1200, questions=6))
    samples = [sample for sample in task.build(loaded) if hasattr(sample, "spans")]
    assert len(samples) >= 10
    for sample in samples:
        item = next(item for item in task.items[sample.language] if sample.sample_id.endswith(item.id))

        def decode(span, ids=sample.input_ids):
            return tiny_tokenizer_session.decode(ids[span[0] : span[1]]).strip()

        assert decode(sample.spans["support_0"]) == item.facts[0]
        assert decode(sample.spans["support_1"]) == item.facts[1]
        assert sample.spans["needle"] == sample.spans["support_1"]
        assert decode(sample.spans["answer"]) == item.answer
        start, end = sample.spans["context"]
        assert start <= sample.spans["support_0"][0] and sample.spans["support_1"][1] <= end


def test_magic_needles_carry_the_same_uuid_in_every_language_and_locate_exactly(tiny_tokenizer_session):
    from types import SimpleNamespace

    codes = {
        code: [needle.answer for needle in load_needles("magic", code)]
        for code in ("en", "de", "zh", "fr", "es")
    }
    assert len({tuple(answers) for answers in codes.values()}) == 1
    assert all(str(uuid.UUID(answer)) == answer for answer in codes["en"])
    loaded = SimpleNamespace(
        tokenizer=tiny_tokenizer_session, is_chat=False, layout=SimpleNamespace(max_positions=None)
    )
    samples = NiahTask(NiahSettings(("en", "zh"), needles="magic", lengths=(1200,), depths=(0.5,))).build(
        loaded
    )
    for sample in samples:
        answer = tiny_tokenizer_session.decode(sample.input_ids[slice(*sample.spans["answer"])]).strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", answer) and answer == sample.expected


def test_hotpotqa_rows_load_through_hf_with_yes_no_questions_left_out(monkeypatch):
    import sys
    import types

    from babelheads.analysis.aggregate import ThinDataWarning

    context = {
        "title": ["Orla Fen", "Brask"],
        "sentences": [
            ["Orla Fen is a marsh.", "It was drained by Ivo Brask."],
            ["Ivo Brask was born in Tellum.", "He liked boats."],
        ],
    }
    rows = [
        {
            "id": "h1",
            "question": "Where was the man who drained Orla Fen born?",
            "answer": "Tellum",
            "supporting_facts": {"title": ["Brask", "Orla Fen"], "sent_id": [0, 1]},
            "context": context,
        },
        {
            "id": "h2",
            "question": "Was Orla Fen drained?",
            "answer": "yes",
            "supporting_facts": {"title": ["Orla Fen"], "sent_id": [1]},
            "context": context,
        },
    ]
    seen = {}

    def load_dataset(name, config, split):
        seen.update(name=name, config=config, split=split)
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.warns(ThinDataWarning, match="1 questions left out"):
        items = load_two_hop("hf:hotpotqa/hotpot_qa:distractor", "en")
    assert seen == {"name": "hotpotqa/hotpot_qa", "config": "distractor", "split": "validation"}
    assert len(items) == 1
    item = items[0]
    # The fact that holds the answer goes last; the context's other sentences are distractors.
    assert item.facts == ("It was drained by Ivo Brask.", "Ivo Brask was born in Tellum.")
    assert item.distractors == ("Orla Fen is a marsh.", "He liked boats.")


def test_a_detect_recording_with_hidden_states_is_the_dynamic_run_of_its_samples(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    """`dynamic --recording` analyses a detect run instead of decoding: the same samples decoded by
    `dynamic` give the same events and hidden states, so its analyses are the same."""
    grid = ["--model", str(tiny_model_dir), "--lengths", "1200", "--depths", "0.3,0.7", "--needles", "magic"]
    grid += ["--needles-per-cell", "2", "--max-new-tokens", "6", "--languages", "en,de"]
    detect, decoded, replay = tmp_path / "detect", tmp_path / "decoded", tmp_path / "replay"
    code, _, err = run_cli(
        monkeypatch, capsys, "detect", *grid, "--hidden-states", "--out", str(detect), "--quiet"
    )
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "dynamic", *grid, "--out", str(decoded), *FAST)
    assert code == 0, err
    code, stdout, err = run_cli(
        monkeypatch, capsys, "dynamic", "--recording", str(detect), "--out", str(replay), *FAST
    )
    assert code == 0, err
    assert "CCA top-1" in stdout
    ours, theirs = RunStore(replay), RunStore(decoded)
    for name in ("events", "hidden", "head_scores"):
        assert ours.table(name).equals(theirs.table(name)), name
    for name in ("dynamic_stats", "static_heads", "cca", "probe", "claims"):
        assert (
            ours.derived(name)
            .drop(columns=["run"], errors="ignore")
            .equals(theirs.derived(name).drop(columns=["run"], errors="ignore"))
        ), name
    # Replayed with --from, it is the same run: finished, nothing copied again.
    code, _, err = run_cli(monkeypatch, capsys, "dynamic", "--from", str(replay), "--out", str(replay), *FAST)
    assert code == 0, err
    # A recording without hidden states is refused with the fix.
    plain = tmp_path / "plain"
    code, _, err = run_cli(monkeypatch, capsys, "detect", *grid, "--out", str(plain), "--quiet")
    assert code == 0, err
    code, _, err = run_cli(
        monkeypatch, capsys, "dynamic", "--recording", str(plain), "--out", str(tmp_path / "x"), *FAST
    )
    assert_one_line_error(code, err, "recorded without hidden states")
