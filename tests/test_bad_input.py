"""Bad input gets one clear line (exit 2, no traceback) before any model loads, and leaves no run
directory behind; out of range is refused, never clipped; NaN is refused explicitly.

Each case runs the installed ``babelheads`` command in a subprocess, as a user would. A command that
builds a config imports torch and transformers first (about 6 s of CPU), so the cases run a few at a
time from one module fixture, sharing the tiny source runs it builds once, and each test reads its own
outcome: one pool instead of ~20 sequential starts. The config dataclasses are also checked directly,
in-process (the Python API, config files and --from build them too).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from babelheads.errors import BabelheadsError
from babelheads.runs import RunStore

CLI = Path(sys.executable).parent / "babelheads"
LANGUAGES = ("en", "de")
WRONG_MASK = {"values": [[1.0, 1.0]]}  # another model's shape: 1 x 2; the tiny model is 3 x 4


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def assert_refused(outcome: Outcome, pattern: str) -> None:
    """Exit 2, one line on stderr starting with 'error: ' that matches ``pattern``, no traceback."""
    assert outcome.code == 2, (outcome.code, outcome.err[-2000:])
    assert "Traceback" not in outcome.err, outcome.err[-2000:]
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.err[-2000:]
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished detection run of the tiny model (en, de), built once for the module."""
    from babelheads.analysis.aggregate import AggregateSettings
    from babelheads.execution import Execution
    from babelheads.experiments.detect import DetectConfig, detect
    from babelheads.tasks.niah import NiahSettings

    out = tmp_path_factory.mktemp("bad-input") / "detect"
    config = DetectConfig(
        model=str(tiny_model_dir),
        task=NiahSettings(languages=LANGUAGES, lengths=(800,), depths=(0.5,)),
        max_new_tokens=3,
        analysis=AggregateSettings(score_on="all"),
    )
    detect(config, out, Execution(device="cpu", progress=False))
    return out


@pytest.fixture(scope="module")
def importance_run(tmp_path_factory, tiny_model_dir) -> Path:
    from babelheads.execution import Execution
    from babelheads.experiments.importance import ImportanceConfig, Selection, importance
    from babelheads.tasks.lm_texts import TextSettings

    out = tmp_path_factory.mktemp("bad-input") / "importance"
    config = ImportanceConfig(
        model=str(tiny_model_dir),
        texts=TextSettings(LANGUAGES, texts=2, window=32),
        selection=Selection(percentile=70.0, min_languages=2, share=0.1),
    )
    importance(config, out, Execution(device="cpu", progress=False))
    return out


@pytest.fixture(scope="module")
def varied_detect_run(detect_run, tmp_path_factory) -> Path:
    """The detection run with retrieval scores that vary over heads (the random model copies nothing,
    so every score is 0): the rank correlation with importance is then computed, not skipped."""
    out = tmp_path_factory.mktemp("bad-input") / "varied"
    shutil.copytree(detect_run, out)
    store = RunStore(out)
    scores = store.derived("scores")
    scores["score"] = scores["paper"] = (scores["layer"] * 4 + scores["head"]) / 12.0
    store.write_derived("scores", scores)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input-cases")


@pytest.fixture(scope="module")
def inputs(work, detect_run) -> dict[str, Path]:
    """Bad files and damaged runs the cases read."""
    files = {
        "wrong_mask": work / "wrong-mask.json",
        "empty_scores": work / "empty.json",
        "text_scores": work / "text.json",
        "far_scores": work / "far.json",
        "good_scores": work / "good.json",
        "report_dir": work / "report-dir",
        "truncated": work / "truncated",
        "no_spec": work / "no-spec",
    }
    files["wrong_mask"].write_text(json.dumps(WRONG_MASK))
    files["empty_scores"].write_text("{}")
    files["text_scores"].write_text(json.dumps({"11-2": "high"}))
    files["far_scores"].write_text(json.dumps({"99-7": 0.9, "0-1": 0.2}))
    files["good_scores"].write_text(json.dumps({"0-1": 0.2}))
    files["report_dir"].mkdir()
    for name in ("truncated", "no_spec"):
        shutil.copytree(detect_run, files[name])
    manifest = (detect_run / "manifest.json").read_text()
    (files["truncated"] / "manifest.json").write_text(manifest[: len(manifest) // 2])
    (files["no_spec"] / "manifest.json").write_text(json.dumps({"seed": 0, "layout": {}}))
    return files


@pytest.fixture(scope="module")
def outcomes(work, inputs, tiny_model_dir, detect_run, importance_run, varied_detect_run):
    """Every case's outcome, the commands run a few at a time (see the module's docstring)."""
    model, detect, lahis = str(tiny_model_dir), str(detect_run), str(importance_run)
    quiet = ["--quiet", "--device", "cpu"]
    small_importance = ["importance", "--model", model, "--languages", ",".join(LANGUAGES), *quiet]
    small_detect = ["detect", "--model", model, "--languages", "en", "--lengths", "800", *quiet]
    small_compress = ["compress", "--model", model, "--languages", "en", *quiet]

    def with_out(name: str, *args: object) -> list:
        """A command that writes a run: --out is named after the case (a refusal must leave it absent)."""
        return [*args, "--out", work / name]

    cases = {
        "percentile-150": with_out("percentile-150", *small_importance, "--percentile", "150"),
        "min-languages": with_out("min-languages", *small_importance, "--min-languages", "5"),
        "replicates": with_out("replicates", "language-test", lahis, "--replicates", "-5", *quiet),
        "amplify": with_out(
            "amplify", "language-test", lahis, "--exp", "attn-transfer", "--amplify", "nan", *quiet
        ),
        "rag-threshold": with_out(
            "rag-threshold", "rag", "--model", model, "--selections", "none", "--threshold", "nan", *quiet
        ),
        "rag-head-count": with_out(
            "rag-head-count", "rag", "--heads", detect, "--selections", "static,none", "--head-count", "1000"
        ),
        "static-k": ["dynamic-stats", detect, "--static-k", "500"],
        "compress-far-head": with_out("compress-far-head", *small_compress, "--heads", inputs["far_scores"]),
        "compress-empty": with_out("compress-empty", *small_compress, "--heads", inputs["empty_scores"]),
        "compress-text": with_out("compress-text", *small_compress, "--heads", inputs["text_scores"]),
        "mask-detect": with_out("mask-detect", *small_detect, "--head-mask", inputs["wrong_mask"]),
        "summary-top": ["summary", detect, "--top", "-1", "--write", "--score", "official"],
        "report-min-samples": ["report", detect, "--min-samples", "-1", "-o", work / "min-samples.html"],
        "adapt-lr": with_out("adapt-lr", "adapt", lahis, "--lr", "nan", *quiet),
        "report-dir": ["report", detect, "-o", inputs["report_dir"]],
        "manifest-compare": with_out("manifest-compare", "compare", inputs["truncated"]),
        "manifest-ablate": with_out("manifest-ablate", "ablate", inputs["no_spec"], *quiet),
        "manifest-from": with_out("manifest-from", "detect", "--from", inputs["truncated"], "--quiet"),
        "compress-batch": with_out(
            "compress-batch", *small_compress, "--heads", inputs["good_scores"], "--batch-size", "4"
        ),
        "drift-shard": with_out("drift-shard", *small_importance, "--drift", "--shard", "0/2"),
        "retrieval-paper": with_out(
            "retrieval-paper",
            *["language-test", lahis, "--exp", "retrieval", "--detect", varied_detect_run],
            *["--threshold", "0.5", "--quiet"],
        ),
    }

    def run(args: list) -> Outcome:
        done = subprocess.run(
            [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=600, check=False
        )
        return Outcome(done.returncode, done.stdout, done.stderr)

    # Starting each command is CPU-bound imports: more workers than cores only queue.
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {name: pool.submit(run, args) for name, args in cases.items()}
        return {name: future.result() for name, future in futures.items()}


# Late refusals: refused when the config is built, not after every gradient or part was computed.


def test_importance_refuses_a_percentile_out_of_range(outcomes, work):
    # NaN takes the same path: see test_selection_validates_its_fields.
    assert_refused(outcomes["percentile-150"], r"--percentile must lie in \(0, 100\).*Got 150")
    assert not (work / "percentile-150").exists()


def test_importance_refuses_more_min_languages_than_languages(outcomes, work):
    assert_refused(outcomes["min-languages"], r"--min-languages must be between 1 and .* \(2\)\. Got 5")
    assert not (work / "min-languages").exists()


def test_language_test_refuses_negative_replicates(outcomes, work):
    assert_refused(outcomes["replicates"], r"--replicates must be at least 1 .*Got -5")
    assert not (work / "replicates").exists()


# Silent acceptance: refused with the range, never clipped or turned into empty outputs.


def test_attn_transfer_refuses_a_nan_amplification(outcomes, work):
    assert_refused(outcomes["amplify"], r"--amplify must be a finite factor > 0.*Got nan")
    assert not (work / "amplify").exists()


def test_rag_refuses_a_nan_threshold(outcomes, work):
    assert_refused(outcomes["rag-threshold"], r"--threshold must be a finite RIND >= 0.*Got nan")
    assert not (work / "rag-threshold").exists()


def test_rag_refuses_more_heads_than_the_heads_runs_model_has(outcomes, work):
    assert_refused(outcomes["rag-head-count"], r"--head-count must be between 1 and the model's 12 heads")
    assert not (work / "rag-head-count").exists()


def test_dynamic_stats_refuses_a_static_k_above_the_models_heads_and_writes_nothing(outcomes, detect_run):
    assert_refused(outcomes["static-k"], r"--static-k must be between 0 and the model's 12 heads.*Got 500")
    assert not (detect_run / "dynamic_stats.parquet").exists()
    assert not (detect_run / "static_heads.parquet").exists()


def test_compress_refuses_a_score_file_head_outside_the_model(outcomes, work):
    assert_refused(outcomes["compress-far-head"], r"far\.json scores head 99-7, outside .*3 layers x 4 heads")
    assert not (work / "compress-far-head").exists()


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("compress-empty", r"empty\.json holds no head scores"),
        ("compress-text", r"text\.json: the scores of head '11-2' must be numbers.*'high'"),
    ],
)
def test_compress_refuses_an_empty_or_non_numeric_score_file(outcomes, work, case, pattern):
    assert_refused(outcomes[case], pattern)
    assert not (work / case).exists()


def test_another_models_head_mask_is_refused_before_the_run_exists(outcomes, work):
    # Detect used to write its manifest first, so the corrected mask was then refused as another run;
    # ablate and language-test read the shape from their source run (test_head_masks_are_checked...).
    assert_refused(
        outcomes["mask-detect"], r"wrong-mask\.json is a 1 x 2 head mask, but this model has 3 layers x 4"
    )
    assert not (work / "mask-detect").exists()


def test_summary_refuses_a_negative_top_before_rewriting_anything(outcomes, detect_run):
    assert_refused(outcomes["summary-top"], r"--top must be at least 1.*Got -1")
    # --write --score official would have rewritten the official files: nothing was rewritten.
    assert not list(detect_run.glob("retrieval_scores.*.official.json"))


def test_report_refuses_negative_min_samples(outcomes, work):
    assert_refused(outcomes["report-min-samples"], r"--min-samples must be at least 1.*Got -1")
    assert not (work / "min-samples.html").exists()


# Tracebacks turned into one line.


def test_adapt_refuses_a_nan_learning_rate(outcomes, work):
    assert_refused(outcomes["adapt-lr"], r"--lr must be a finite learning rate > 0.*Got nan")
    assert not (work / "adapt-lr").exists()


def test_a_report_into_a_directory_is_refused_and_leaves_no_temporary_file(outcomes, inputs):
    directory = inputs["report_dir"]
    assert_refused(outcomes["report-dir"], r"report-dir is a directory; the report is one HTML file")
    assert directory.is_dir() and not any(directory.iterdir())
    assert not directory.with_name(directory.name + ".tmp").exists()


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("manifest-compare", r"truncated/manifest\.json is corrupted"),
        ("manifest-ablate", r"no-spec/manifest\.json is not a babelheads run manifest.*'spec'.*'kind'"),
        ("manifest-from", r"truncated/manifest\.json is corrupted"),
    ],
)
def test_a_damaged_manifest_gets_one_line(outcomes, work, case, pattern):
    assert_refused(outcomes[case], pattern)
    assert not (work / case).exists()


# A crash on valid input.


def test_retrieval_overlap_runs_when_both_runs_have_a_paper_column(outcomes, work):
    outcome = outcomes["retrieval-paper"]
    assert outcome.code == 0, outcome.err[-2000:]
    table = RunStore(work / "retrieval-paper").derived("retrieval_overlap")
    per_language = table[table["language"].isin(LANGUAGES)]
    assert set(per_language["language"]) == set(LANGUAGES)
    assert per_language["spearman_retrieval_vs_importance"].notna().all()


# The config dataclasses themselves (the Python API, config files and --from go through them too).


NAN = math.nan


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"percentile": 150.0}, r"--percentile must lie in \(0, 100\)"),
        ({"percentile": NAN}, r"--percentile .*Got nan"),
        ({"percentile": 0.0}, r"--percentile"),
        ({"min_languages": 0}, r"--min-languages must be at least 1"),
        ({"share": NAN}, r"--share must lie in \(0, 1\)"),
    ],
)
def test_selection_validates_its_fields(fields, pattern):
    from babelheads.experiments.importance import Selection

    with pytest.raises(BabelheadsError, match=pattern):
        Selection(**fields)


def test_importance_config_checks_min_languages_against_its_languages():
    from babelheads.experiments.importance import ImportanceConfig, Selection
    from babelheads.tasks.lm_texts import TextSettings

    with pytest.raises(BabelheadsError, match=r"between 1 and the number of languages \(2\)\. Got 5"):
        ImportanceConfig(texts=TextSettings(LANGUAGES), selection=Selection(min_languages=5))
    # One language: the default (80 %, at least 2) cannot be met; said before any gradient.
    with pytest.raises(BabelheadsError, match=r"Got 2 \(the default"):
        ImportanceConfig(texts=TextSettings(("en",)))
    ImportanceConfig(texts=TextSettings(("en",)), selection=Selection(min_languages=1))


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"replicates": -5}, r"--replicates must be at least 1 .*Got -5"),
        ({"replicates": 0}, r"--replicates"),
        ({"amplify": NAN}, r"--amplify must be a finite factor > 0"),
        ({"amplify": math.inf}, r"--amplify"),
        ({"amplify": 0.0}, r"--amplify"),
        ({"threshold": NAN}, r"--threshold must be a finite score"),
        ({"per_pair": 0}, r"--per-pair must be at least 1"),
        ({"questions": -1}, r"--questions must be at least 0"),
    ],
)
def test_language_test_config_validates_its_fields(fields, pattern):
    from babelheads.experiments.language_tests import LanguageTestConfig

    with pytest.raises(BabelheadsError, match=pattern):
        LanguageTestConfig(heads="runs/importance", **fields)


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"lr": NAN}, r"--lr must be a finite learning rate > 0.*Got nan"),
        ({"lr": math.inf}, r"--lr"),
        ({"lr": 0.0}, r"--lr"),
        ({"weight_decay": NAN}, r"--weight-decay must be a finite number >= 0"),
        ({"weight_decay": -0.1}, r"--weight-decay"),
        ({"epochs": 0}, r"--epochs must be at least 1"),
        ({"train_questions": -1}, r"--train-questions"),
        ({"replicates": 0}, r"--replicates must be at least 1"),
    ],
)
def test_adapt_config_validates_its_fields(fields, pattern):
    from babelheads.experiments.adapt import AdaptConfig

    with pytest.raises(BabelheadsError, match=pattern):
        AdaptConfig(heads="runs/importance", **fields)


def test_rag_settings_refuse_nan_and_bad_counts():
    from babelheads.experiments.rag import RagConfig
    from babelheads.rag.loop import LoopSettings

    with pytest.raises(BabelheadsError, match=r"--threshold must be a finite RIND"):
        LoopSettings(threshold=NAN)
    with pytest.raises(BabelheadsError, match=r"--threshold"):
        LoopSettings(threshold=math.inf)
    with pytest.raises(BabelheadsError, match=r"--replicates must be at least 1"):
        RagConfig(model="m", selections=("none",), replicates=0)


def test_rag_head_count_is_checked_against_the_heads_runs_layout(detect_run):
    from babelheads.experiments.rag import RagConfig, _heads_run
    from babelheads.rag.loop import LoopSettings

    config = RagConfig(heads=str(detect_run), selections=("static", "none"), loop=LoopSettings(head_count=13))
    with pytest.raises(BabelheadsError, match=r"--head-count must be between 1 and the model's 12 heads"):
        _heads_run(config)
    fitting = LoopSettings(head_count=12)
    _heads_run(RagConfig(heads=str(detect_run), selections=("static", "none"), loop=fitting))


def test_dynamic_settings_refuse_a_static_k_above_the_model_and_bad_replicates(tiny_model_dir, detect_run):
    from babelheads.experiments.dynamic import DynamicAnalysis, DynamicConfig
    from babelheads.experiments.dynamic_ablate import DynamicAblateConfig

    with pytest.raises(BabelheadsError, match=r"--replicates must be at least 1"):
        DynamicAnalysis(replicates=0)
    with pytest.raises(BabelheadsError, match=r"--static-k must be between 0 and the model's 12 heads"):
        DynamicAnalysis(static_k=13).check_heads(RunStore(detect_run).manifest()["layout"], detect_run)
    # Known from the model's config before decoding: the statistics come only after every sample.
    with pytest.raises(BabelheadsError, match=r"--static-k must be between 0 and the model's 12 heads"):
        DynamicConfig(model=str(tiny_model_dir), analysis=DynamicAnalysis(static_k=500))
    with pytest.raises(BabelheadsError, match=r"--static-k must be between 0 and the model's 12 heads"):
        DynamicAblateConfig(heads=str(detect_run), static_k=500)
    with pytest.raises(BabelheadsError, match=r"--static-share in \(0, 1\]"):
        DynamicAblateConfig(heads=str(detect_run), static_share=NAN)


def test_compress_config_checks_a_score_file_before_the_model_loads(tmp_path, tiny_model_dir):
    from babelheads.experiments.compress import CompressConfig

    def file(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    with pytest.raises(BabelheadsError, match=r"empty\.json holds no head scores"):
        CompressConfig(heads=file("empty.json", "{}"))
    with pytest.raises(BabelheadsError, match=r"head '11-2' must be numbers"):
        CompressConfig(heads=file("text.json", '{"11-2": "high"}'))
    with pytest.raises(BabelheadsError, match=r"head '11-2' must be numbers"):
        CompressConfig(heads=file("bool.json", '{"11-2": true}'))
    with pytest.raises(BabelheadsError, match=r"nan\.json: head '11-2' has no finite score"):
        CompressConfig(heads=file("nan.json", '{"0-1": 0.5, "11-2": NaN}'))
    with pytest.raises(BabelheadsError, match=r"list\.json: head '0-1' has no finite score"):
        CompressConfig(heads=file("list.json", '{"0-1": []}'))
    far = file("far.json", '{"99-7": 0.5}')
    with pytest.raises(BabelheadsError, match=r"head 99-7, outside this model \(3 layers x 4 heads"):
        CompressConfig(heads=far, model=str(tiny_model_dir))
    CompressConfig(heads=far)  # no model named yet: checked once it loads (head_scores)
    with pytest.raises(BabelheadsError, match=r"--replicates and --max-new-tokens must be at least 1"):
        CompressConfig(heads="runs/detect", replicates=0)


def test_head_scores_refuse_a_head_outside_the_loaded_models_layout(tmp_path):
    from babelheads.experiments.compress import head_scores
    from babelheads.heads import HeadLayout

    path = tmp_path / "far.json"
    path.write_text('{"17-3": 0.5}')
    layout = HeadLayout(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    with pytest.raises(BabelheadsError, match=r"head 17-3, outside this model \(2 layers x 4 heads"):
        head_scores(str(path), layout)


def test_head_masks_are_checked_against_the_model_before_it_loads(
    tmp_path, tiny_model_dir, detect_run, importance_run
):
    from babelheads.experiments.ablate import AblateConfig
    from babelheads.experiments.detect import DetectConfig
    from babelheads.experiments.language_tests import LanguageTestConfig

    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps(WRONG_MASK))
    shape = r"1 x 2 head mask, but this model has 3 layers x 4 heads"
    with pytest.raises(BabelheadsError, match=shape):
        DetectConfig(model=str(tiny_model_dir), head_mask=str(mask))
    with pytest.raises(BabelheadsError, match=shape):
        AblateConfig(run=str(detect_run), head_mask=str(mask))
    with pytest.raises(BabelheadsError, match=shape):
        LanguageTestConfig(heads=str(importance_run), head_mask=str(mask))
    fitting = tmp_path / "fitting.json"
    fitting.write_text(json.dumps({"values": [[1.0] * 4] * 3}))
    DetectConfig(model=str(tiny_model_dir), head_mask=str(fitting))
    AblateConfig(run=str(detect_run), head_mask=str(fitting))


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"threshold": NAN}, r"--threshold must be a finite score"),
        ({"success_threshold": NAN}, r"success_threshold must lie in \[0, 1\)"),
        ({"replicates": 0}, r"replicates must be at least 1"),
        ({"cot_tokens": 0}, r"--cot-tokens must be at least 1"),
        ({"cot_prompt": "plian"}, r"Unknown --cot-prompt 'plian'. Use auto, chat or plain"),
    ],
)
def test_ablate_config_validates_its_fields(fields, pattern):
    from babelheads.experiments.ablate import AblateConfig

    with pytest.raises(BabelheadsError, match=pattern):
        AblateConfig(run="runs/detect", **fields)


def test_summary_and_report_options_are_checked_before_anything_is_read(tmp_path, detect_run):
    from babelheads.report.html import build_report
    from babelheads.report.text import check_summary_options

    with pytest.raises(BabelheadsError, match=r"--top must be at least 1 .*Got 0"):
        check_summary_options(0, 0.1)
    with pytest.raises(BabelheadsError, match=r"--threshold must be a finite score >= 0"):
        check_summary_options(10, NAN)
    with pytest.raises(BabelheadsError, match=r"--min-samples must be at least 1 .*Got 0"):
        build_report([detect_run], tmp_path / "r.html", min_samples=0)
    with pytest.raises(BabelheadsError, match=r"is a directory"):
        build_report([detect_run], tmp_path)
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp"))


def test_manifests_without_a_spec_and_truncated_ones_are_refused_in_one_line(tmp_path):
    from babelheads.settings_files import replay_run

    for name, text in {
        "list": "[]",
        "no-spec": '{"seed": 0}',
        "no-kind": '{"spec": {"config": {}}}',
        "spec-text": '{"spec": "detect"}',
    }.items():
        run = tmp_path / name
        run.mkdir()
        (run / "manifest.json").write_text(text)
        with pytest.raises(BabelheadsError, match=r"not a babelheads run manifest"):
            RunStore(run).manifest()
        with pytest.raises(BabelheadsError, match=r"not a babelheads run manifest"):
            replay_run(run, "detect", {"model"})
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "manifest.json").write_text('{"spec": {"kind": "det')
    with pytest.raises(BabelheadsError, match=r"is corrupted"):
        replay_run(truncated, "detect", {"model"})


def test_retrieval_overlap_compares_score_with_the_formula_when_both_tables_have_paper():
    from babelheads.analysis.language_heads import retrieval_overlap

    heads = [(layer, head) for layer in range(2) for head in range(2)]
    retrieval = pd.DataFrame(
        [
            {"language": "en", "layer": layer, "head": head, "score": s, "paper": s, "official": 2 * s}
            for (layer, head), s in zip(heads, [0.9, 0.5, 0.2, 0.0], strict=True)
        ]
    )
    importance = pd.DataFrame(
        [
            {"language": "en", "layer": layer, "head": head, "paper": p, "code": -p}
            for (layer, head), p in zip(heads, [4.0, 3.0, 2.0, 1.0], strict=True)
        ]
    )
    language_heads = pd.DataFrame(
        [{"language": "en", "layer": 0, "head": 0, "role": "specific", "rank": 1, "score": 4.0}]
    )
    for formula, rho in (("paper", 1.0), ("code", -1.0)):
        table = retrieval_overlap(retrieval, language_heads, importance, 4, formula, 0.1)
        en = table[table["language"] == "en"]
        assert en["spearman_retrieval_vs_importance"].to_numpy() == pytest.approx([rho] * 3), en


def test_an_execution_setting_a_kind_cannot_honour_is_refused_not_ignored(outcomes, work):
    """compress decodes one sample at a time; importance --drift scores a language's texts in sequence."""
    assert_refused(outcomes["compress-batch"], r"one sample at a time.*--batch-size 4 would be ignored")
    assert_refused(outcomes["drift-shard"], r"--drift scores a language's texts in sequence")
    assert not (work / "compress-batch").exists() and not (work / "drift-shard").exists()
