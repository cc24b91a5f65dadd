"""The detect/summary commands end to end on a tiny local model: resume, kill -9, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from babelheads import cli
from babelheads.runs import RunStore

FAST = ["--lengths", "800,1000", "--depths", "0,0.5,1", "--max-new-tokens", "5", "--quiet"]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["babelheads", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    import re

    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def detect_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", "--model", str(model_dir), "--out", str(out), *FAST, *extra]


def tables(out: Path) -> dict[str, pd.DataFrame]:
    store = RunStore(out)
    return {name: store.table(name) for name in ("samples", "events", "head_scores")} | {
        "scores": store.derived("scores")
    }


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in a:
        left, right = a[name], b[name]
        assert len(left) > 0
        pd.testing.assert_frame_equal(
            left.drop(columns=["positions", "weights"], errors="ignore"),
            right.drop(columns=["positions", "weights"], errors="ignore"),
        )
        if "positions" in left:
            assert [list(x) for x in left["positions"]] == [list(x) for x in right["positions"]]


def test_detect_writes_a_complete_run_and_summary_reads_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, out))
    assert code == 0
    assert "[en]" in stdout and "[de]" in stdout and "[zh]" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["config"]["task"]["depths"] == [0.0, 0.5, 1.0]
    assert set(manifest["spec"]["data"]) >= {"corpus:en", "needles:de", "language:zh"}
    assert manifest["spec"]["precision"] == "float32"
    assert manifest["spec"]["model"]["fingerprint"]
    assert manifest["environment"]["packages"]["torch"]
    assert manifest["layout"]["num_layers"] == 3 and manifest["layout"]["num_kv_heads"] == 2
    run = tables(out)
    assert len(run["samples"]) == 3 * 2 * 3
    steps = run["samples"]["steps"].sum()
    assert len(run["events"]) == steps * 3 * 4  # every step, layer and head
    assert set(run["scores"]["language"]) == {"en", "de", "zh"}
    for language in ("en", "de", "zh"):
        exported = json.loads((out / f"retrieval_scores.{language}.paper.json").read_text())
        assert all(key.count("-") == 1 for key in exported)
    # The random tiny model retrieves nothing: its scores are NaN (not zeros) until re-aggregated over all.
    assert run["scores"]["score"].isna().all()
    code, stdout, _ = run_cli(monkeypatch, capsys, "summary", str(out))
    assert code == 0 and "NaN" in stdout and "[0.5, 1]" not in stdout
    code, stdout, _ = run_cli(monkeypatch, capsys, "summary", str(out), "--score-on", "all")
    assert code == 0 and "= 0" in stdout and "[0.5, 1]" in stdout and "averaged over all samples" in stdout


def test_the_same_command_twice_gives_the_same_tables_and_recomputes_nothing(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, first))[0] == 0
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, second))[0] == 0
    assert_same_tables(tables(first), tables(second))
    parts = sorted((first / "tables" / "samples").glob("*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in parts]
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, first))[0] == 0
    assert [path.stat().st_mtime_ns for path in parts] == stamps


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    args = [
        "--lengths",
        "1000,1200,1400",
        "--depths",
        "0,0.25,0.5,0.75,1",
        "--max-new-tokens",
        "8",
        "--quiet",
    ]
    command = [sys.executable, "-m", "babelheads.cli", "detect", "--model", str(tiny_model_dir), *args]
    process = subprocess.Popen(
        [*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    samples = killed / "tables" / "samples"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(samples.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(samples.glob("*.parquet")))
    assert 3 <= finished < 45, "the kill must land mid-run"
    subprocess.run([*command, "--out", str(killed)], check=True, capture_output=True)
    subprocess.run([*command, "--out", str(reference)], check=True, capture_output=True)
    assert len(list(samples.glob("*.parquet"))) == 45
    assert not list(killed.rglob("*.tmp"))
    assert_same_tables(tables(killed), tables(reference))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--model", "gema-3-270m"], r"Unknown model 'gema-3-270m'.*Did you mean: gemma-3-270m\?"),
        (["--model", "./missing/model.gguf"], r"not found: \./missing/model\.gguf"),
        (["--languages", "en,xx"], r"Unknown language 'xx'\. Available: .*en"),
        (["--lengths", "3000"], r"Length 3000 exceeds the model's context of 2048 tokens"),
        (["--depths", "0,1.5"], r"Depth must lie in \[0, 1\]\. Got 1\.5"),
        (["--lengths", "1k"], r"--lengths must be comma-separated integers"),
        (["--score", "best"], r"Unknown score variant 'best'"),
        (["--top-k", "0"], r"top_k must be >= 1"),
        (["--success-threshold", "1.5"], r"success_threshold must lie in \[0, 1\)"),
        (["--max-new-tokens", "0"], r"max_new_tokens must be at least 1"),
        (["--pairs", "en:en"], r"A pair reads SOURCE:ANSWER with two different languages"),
        (["--needle-kind", "keys"], r"needle_kind must be one of"),
    ],
)
def test_bad_detect_input_gets_one_clear_line(tiny_model_dir, tmp_path, monkeypatch, capsys, args, pattern):
    out = tmp_path / "run"
    base = detect_args(tiny_model_dir, out)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    code, _, err = run_cli(monkeypatch, capsys, *base)
    assert_one_line_error(code, err, pattern)
    assert not (out / "manifest.json").exists(), "a refused run writes nothing"


def test_a_file_that_is_not_gguf_is_refused(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    code, _, err = run_cli(monkeypatch, capsys, "detect", "--model", str(fake), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, r"is not a GGUF file")


def test_an_empty_or_too_short_corpus_is_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    (empty / "en").mkdir(parents=True)
    (empty / "en" / "a.txt").write_text("   \n")
    out = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, *detect_args(tiny_model_dir, out), "--languages", "en", "--corpus", str(empty)
    )
    assert_one_line_error(code, err, r"has no text for language 'en'")
    short = tmp_path / "short.txt"
    short.write_text("One short sentence. Another one here. And a third.")
    code, _, err = run_cli(
        monkeypatch, capsys, *detect_args(tiny_model_dir, out), "--languages", "en", "--corpus", str(short)
    )
    assert_one_line_error(code, err, r"corpus has \d+ tokens, fewer than the \d+ that length 800 needs")
    assert not out.exists()


def test_a_needle_lost_in_tokenization_is_skipped_with_its_reason(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    needles = tmp_path / "needles.json"
    needles.write_text(
        json.dumps(
            [
                {
                    # The tiny tokenizer splits "others" as " o|th|ers": no token boundary brackets "her".
                    "id": "glued",
                    "statement": "Many others arrived at noon.",
                    "question": "Who arrived?",
                    "answer": "her",
                }
            ]
        )
    )
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *detect_args(tiny_model_dir, tmp_path / "r"),
        "--languages",
        "en",
        "--needles",
        str(needles),
    )
    assert code == 0, err
    samples = RunStore(tmp_path / "r").table("samples")
    assert (samples["status"] == "skipped").all() and len(samples) == 6
    assert "skipped samples (6)" in out and "needle 'glued' merges with the neighbouring characters" in out


def test_an_output_dir_with_a_different_run_is_refused_and_left_intact(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, out), "--languages", "en")[0] == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    args = [*detect_args(tiny_model_dir, out), "--languages", "en"]
    args[args.index("--depths") + 1] = "0.5"
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, r"holds a run made with a different config\.task\.depths")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_corrupted_parquet_file_is_named_with_the_fix(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, out), "--languages", "en")[0] == 0
    victim = sorted((out / "tables" / "events").glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    for command in (["summary", str(out)], [*detect_args(tiny_model_dir, out), "--languages", "en"]):
        code, _, err = run_cli(monkeypatch, capsys, *command)
        assert_one_line_error(code, err, rf"{victim.name} is corrupted .*delete it")


def test_summary_of_a_directory_that_is_no_run(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "summary", str(tmp_path))
    assert_one_line_error(code, err, r"is not a babelheads run")


def test_resuming_with_changed_corpus_content_is_refused_naming_it(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_builtin_text("en"))
    out = tmp_path / "run"
    args = [*detect_args(tiny_model_dir, out), "--languages", "en", "--corpus", str(corpus)]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    corpus.write_text(load_builtin_text("en").replace("the", "a", 1))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, r"holds a run made with a different data\.corpus:en")


def load_builtin_text(code: str) -> str:
    from babelheads.data.corpora import load_corpus

    return load_corpus("builtin", code, 0)


def test_an_out_path_that_is_a_file_gets_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code, _, err = run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, target))
    assert_one_line_error(code, err, r"is a file, not a run directory")
    assert target.read_text() == "keep me"


def test_help_says_what_the_tool_does(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    assert "finds the attention heads a language model uses to retrieve" in out
    assert "thin wrappers" not in out
