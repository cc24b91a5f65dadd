"""The language-head commands end to end on a tiny local model: importance, every experiment, the
adaptation and its mask in other commands, resume, the report, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cli_and_runs import assert_one_line_error, run_cli

from babelheads.runs import RunStore

LANGUAGES = "en,de,zh"
SMALL = ["--quiet", "--replicates", "50"]


@pytest.fixture(scope="module")
def importance_run(tmp_path_factory, tiny_model_dir) -> Path:
    from babelheads.execution import Execution
    from babelheads.experiments.importance import ImportanceConfig, Selection, importance
    from babelheads.tasks.lm_texts import TextSettings

    out = tmp_path_factory.mktemp("importance") / "run"
    config = ImportanceConfig(
        model=str(tiny_model_dir),
        texts=TextSettings(tuple(LANGUAGES.split(",")), texts=4, window=64),
        selection=Selection(percentile=70.0, min_languages=2, share=0.1),
    )
    importance(config, out, Execution(device="cpu", progress=False))
    return out


def test_importance_writes_both_formulas_and_language_heads(importance_run, monkeypatch, capsys):
    store = RunStore(importance_run)
    scores = store.derived("importance")
    assert set(scores["language"]) == {"en", "de", "zh"} and (scores["texts"] == 4).all()
    assert {"paper", "code"} <= set(scores.columns) and len(scores) == 3 * 12
    heads = store.derived("language_heads")
    assert set(heads["role"]) <= {"specific", "general"} and len(heads) > 0
    assert (store.root / "csv" / "language_heads.csv").exists()
    gradients = store.table("gradients")
    assert (gradients["gate"] == 1.0).all()
    # Re-selecting re-reads the stored gradients: nothing is recomputed, the selection is recorded.
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "importance",
        "--from",
        str(importance_run),
        "--out",
        str(importance_run),
        "--formula",
        "code",
        "--quiet",
    )
    assert code == 0, err
    assert "code formula" in out
    assert store.read_json("selection.json")["formula"] == "code"
    pd.testing.assert_frame_equal(store.table("gradients"), gradients)


def test_drift_reproduces_the_released_codes_moving_gates(tmp_path, tiny_model_dir):
    from babelheads.execution import Execution
    from babelheads.experiments.importance import ImportanceConfig, importance
    from babelheads.tasks.lm_texts import TextSettings

    config = ImportanceConfig(
        model=str(tiny_model_dir), texts=TextSettings(("en", "de"), texts=3, window=48), drift=True
    )
    store = importance(config, tmp_path / "drift", Execution(device="cpu", progress=False))
    gradients = store.table("gradients")
    for _, frame in gradients.groupby("language"):
        first = sorted(frame["sample_id"].unique())[0]
        assert (frame.loc[frame["sample_id"] == first, "gate"] == 1.0).all()
        assert (frame.loc[frame["sample_id"] != first, "gate"] != 1.0).any()


@pytest.mark.parametrize(
    "experiment, extra, table",
    [
        ("ppl", ["--texts", "3", "--window", "48", "--random-seeds", "2"], "ppl"),
        ("ppl-cross", ["--texts", "3", "--window", "48"], "ppl_cross"),
        ("general", ["--texts", "2", "--window", "48", "--questions", "2", "--random-seeds", "1"], "general"),
        ("off-target", ["--prompts", "2", "--summary-tokens", "4", "--random-seeds", "1"], "off_target"),
        (
            "attn-transfer",
            ["--per-pair", "1", "--random-seeds", "1", "--languages", "en,de"],
            "attn_transfer",
        ),
    ],
)
def test_each_experiment_runs_resumes_and_reports(
    importance_run, tmp_path, monkeypatch, capsys, experiment, extra, table
):
    out = tmp_path / experiment
    args = ["language-test", str(importance_run), "--exp", experiment, "--out", str(out), *SMALL, *extra]
    code, printed, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert f"experiment {experiment}" in printed
    store = RunStore(out)
    result = store.derived(table)
    assert len(result) > 0 and (out / "csv" / f"{table}.csv").exists()
    if "random_minus_none" in result:  # every contrast has its random baseline, pairs of languages too
        assert result["random_minus_none"].notna().all(), result
    finished = store.finished()
    assert finished == set(store.recorded_parts())
    # A finished run answers from its tables; a lost part is recomputed alone, to the same value.
    victim = sorted(finished)[0]
    before = store.table("samples").drop(columns=["output"], errors="ignore")
    (out / "tables" / "samples" / f"{victim}.parquet").unlink()
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    pd.testing.assert_frame_equal(store.table("samples").drop(columns=["output"], errors="ignore"), before)
    code, _, err = run_cli(
        monkeypatch, capsys, "report", str(importance_run), str(out), "-o", str(tmp_path / "r.html")
    )
    assert code == 0, err
    assert "<img" in (tmp_path / "r.html").read_text()


def test_random_heads_match_the_count_and_avoid_the_set(importance_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ppl"
    args = [
        "language-test",
        str(importance_run),
        "--exp",
        "ppl",
        "--out",
        str(out),
        "--texts",
        "2",
        "--window",
        "40",
        "--random-seeds",
        "3",
        *SMALL,
    ]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    conditions = RunStore(out).manifest()["conditions"]
    for code in ("en", "de", "zh"):
        own = {tuple(head) for head in conditions[f"specific:{code}"]["heads"]}
        for seed in range(3):
            drawn = {tuple(head) for head in conditions[f"random-specific:{code}:{seed}"]["heads"]}
            assert len(drawn) == len(own) and not drawn & own
    assert len({str(conditions[f"random-specific:en:{seed}"]["heads"]) for seed in range(3)}) > 1


def test_adapted_mask_is_saved_and_applies_in_other_commands(
    importance_run, tmp_path, monkeypatch, capsys, tiny_model_dir
):
    out = tmp_path / "adapt"
    args = [
        "adapt",
        str(importance_run),
        "--language",
        "de",
        "--train-questions",
        "3",
        "--eval-questions",
        "3",
        "--epochs",
        "1",
        "--random-seeds",
        "1",
        "--out",
        str(out),
        *SMALL,
    ]
    code, printed, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "original" in printed and "adapted" in printed
    mask = json.loads((out / "head_mask.json").read_text())
    values = torch.tensor(mask["values"])
    assert values.shape == (3, 4)
    trained = [tuple(map(int, head.split("-"))) for head in mask["heads"]]
    changed = {
        (layer, head) for layer, head in zip(*torch.nonzero(values != 1.0, as_tuple=True), strict=True)
    }
    assert {(int(a), int(b)) for a, b in changed} <= set(trained) and changed
    # The mask in detect: a different run than without it, and it must fit the model.
    detect = [
        "detect",
        "--model",
        str(tiny_model_dir),
        "--lengths",
        "800",
        "--depths",
        "0.5",
        "--languages",
        "en",
        "--max-new-tokens",
        "3",
        "--quiet",
    ]
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *detect,
        "--out",
        str(tmp_path / "masked"),
        "--head-mask",
        str(out / "head_mask.json"),
    )
    assert code == 0, err
    assert RunStore(tmp_path / "masked").manifest()["spec"]["config"]["head_mask"]["digest"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"values": [[1.0, 1.0]]}))
    code, _, err = run_cli(
        monkeypatch, capsys, *detect, "--out", str(tmp_path / "bad"), "--head-mask", str(wrong)
    )
    assert_one_line_error(code, err, "1 x 2 head mask.*3 layers x 4 heads")
    assert not (tmp_path / "bad" / "tables").exists()


def test_retrieval_meets_language_heads_against_chance(
    importance_run, tmp_path, monkeypatch, capsys, tiny_model_dir
):
    detect = tmp_path / "detect"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "detect",
        "--model",
        str(tiny_model_dir),
        "--lengths",
        "800",
        "--depths",
        "0,1",
        "--languages",
        "en,de",
        "--max-new-tokens",
        "3",
        "--score-on",
        "all",
        "--out",
        str(detect),
        "--quiet",
    )
    assert code == 0, err
    out = tmp_path / "overlap"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "language-test",
        str(importance_run),
        "--exp",
        "retrieval",
        "--detect",
        str(detect),
        "--threshold",
        "0.0",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0, err
    table = RunStore(out).derived("retrieval_overlap")
    assert set(table["language"]) == {"en", "de", "any"}
    assert (table["overlap"] <= table[["retrieval_heads", "heads"]].min(axis=1)).all()
    assert (table["expected_by_chance"] == table["retrieval_heads"] * table["heads"] / 12).all()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--exp", "nonsense"], "Unknown experiment 'nonsense'"),
        (["--languages", "xx"], "no heads for xx"),
        (["--exp", "retrieval"], "--detect RUN"),
        (["--texts", "500"], "--texts"),
    ],
)
def test_bad_input_gets_one_line(importance_run, tmp_path, monkeypatch, capsys, args, pattern):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "language-test",
        str(importance_run),
        "--out",
        str(tmp_path / "x"),
        *args,
        "--quiet",
    )
    assert_one_line_error(code, err, pattern)


def test_importance_refuses_unknown_languages_and_too_few_texts(
    tmp_path, monkeypatch, capsys, tiny_model_dir
):
    base = ["importance", "--model", str(tiny_model_dir), "--out", str(tmp_path / "i"), "--quiet"]
    assert_one_line_error(
        *run_cli(monkeypatch, capsys, *base, "--languages", "en,xx")[:3:2], "Unknown language 'xx'"
    )
    assert_one_line_error(*run_cli(monkeypatch, capsys, *base, "--texts", "900")[:3:2], "--texts")
    assert_one_line_error(*run_cli(monkeypatch, capsys, *base, "--texts", "1")[:3:2], "at least 2 texts")
    assert not (tmp_path / "i").exists()
