"""The study as a user runs it: every stage, its line and time, --only and --skip, a failed stage that
does not stop the others, resuming, and the report; on a tiny local model with a tiny profile."""

from __future__ import annotations

import io
import json
import re
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
from test_cli_and_runs import run_cli

from babelheads.study import PROFILES, Profile, StudyConfig, stages
from babelheads.study.profiles import DEFAULT, PAPER

TINY = Profile(
    name="tiny",
    about="a test's sizes",
    detection={"lengths": (400,), "depths": (0.3, 0.7), "needles_per_cell": 1},
    detect={"max_new_tokens": 6},
    ablate={
        "k": (1,),
        "random_seeds": 2,
        "phases": "decode",
        "lengths": (400,),
        "max_new_tokens": 4,
        "replicates": 20,
        "threshold": 0.0,
    },
    cot={
        "problems": 2,
        "k": (1,),
        "random_seeds": 2,
        "cot_tokens": 8,
        "max_new_tokens": 4,
        "replicates": 20,
        "threshold": 0.0,
    },
    importance_texts={"texts": 2, "window": 32},
    language_tests={
        "texts": 2,
        "window": 32,
        "random_seeds": 2,
        "questions": 2,
        "prompts": 1,
        "summary_tokens": 4,
        "per_pair": 1,
        "replicates": 20,
    },
    experiments=("ppl", "retrieval"),
    adapt={"epochs": 1, "train_questions": 2, "eval_questions": 2, "random_seeds": 2, "replicates": 20},
    probe={"hidden": (8,), "epochs": 2, "cca_lags": (0, 1), "shuffles": 1, "replicates": 20},
    dynamic_ablate={"max_new_tokens": 4, "random_seeds": 1, "progressive": (1,), "replicates": 20},
    dynamic_ablate_niah={"lengths": (400,), "depths": (0.5,), "needles_per_cell": 1},
    rag={"count": 1, "replicates": 20},
    compress={"random_seeds": 1, "shares": (0.5,), "max_new_tokens": 4, "replicates": 20},
    compress_niah={"lengths": (400,), "depths": (0.5,), "needles_per_cell": 1},
)
STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] ([a-z-]+) \(.*\) \.\.\. (.+)$")


@pytest.fixture(scope="module")
def tiny_profile():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PROFILES, "tiny", TINY)
        yield


def _study(monkeypatch, capsys, model, out, *extra):
    args = ["study", "--model", str(model), "--profile", "tiny", "--out", str(out), "--languages", "en,de"]
    args += ["--lahis-languages", "en,de", "--device", "cpu", "--quiet", *extra]
    return run_cli(monkeypatch, capsys, *args)


def _ends(err: str) -> dict[str, str]:
    """Each stage's end line's outcome, by stage name."""
    ends = {}
    for line in err.splitlines():
        found = STAGE_LINE.match(line)
        if found and found.group(4) != "":
            ends[found.group(3)] = found.group(4)
    return ends


@pytest.fixture(scope="module")
def study(tiny_profile, tiny_model_dir, tmp_path_factory):
    """One whole study with its controls, which the tests below read: (directory, exit code, stdout,
    stderr)."""
    from babelheads import cli

    out = tmp_path_factory.mktemp("study") / "study"
    args = ["babelheads", "study", "--model", str(tiny_model_dir), "--profile", "tiny", "--out", str(out)]
    args += ["--languages", "en,de", "--lahis-languages", "en,de", "--device", "cpu", "--quiet", "--control"]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        patch.setattr(sys, "argv", args)
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_every_stage_runs_or_says_why_and_the_report_gathers_the_claims(
    study, tiny_model_dir, monkeypatch, capsys
):
    out, code, stdout, err = study
    record = json.loads((out / "study.json").read_text())
    names = [stage.name for stage in stages(StudyConfig(languages=("en", "de"), control=True), TINY)]
    assert list(record["stages"]) == [*names, "report"]
    ends = _ends(err)
    assert set(ends) == {*names, "report"}, err
    for name, entry in record["stages"].items():
        assert entry["status"] in ("done", "failed", "not run"), (name, entry)
        if entry["status"] == "failed":  # one line saying why, and the stages that do not need it ran
            assert entry["reason"] and "Traceback" not in err, entry
    # The random model answers nothing: the head-guided stages that need retrieval heads say so, and
    # the ones that do not need them finish.
    for name in ("detect", "compare", "importance", "language-tests", "adapt", "dynamic"):
        assert record["stages"][name]["status"] == "done", (name, record["stages"][name], err)
    assert code == (1 if any(entry["status"] == "failed" for entry in record["stages"].values()) else 0)
    assert (out / "report.html").exists() and "report written to" in stdout
    html = (out / "report.html").read_text()
    for claim in ("multilingual.f1_partial_sharing", "lahis.ppl_specific", "dynamic.not_static"):
        assert claim in html, claim
    # The printed times: one per stage that ran, and the total, which they add up to (within rounding
    # and the seconds between stages).
    ran = [*names, "report"]
    times = [
        _seconds(ends[name].removeprefix("failed after ")) for name in ran if ends[name][0] in "0123456789f"
    ]
    total = _seconds(re.search(r"study finished in ([^(]+) \(", err).group(1))
    assert sum(times) <= total + len(times) and total - sum(times) <= 5 + 0.1 * total, err
    # Resumed: every stage done before is not run again.
    code2, _, err2 = _study(monkeypatch, capsys, tiny_model_dir, out, "--control")
    assert code2 == code
    for name in names:
        if record["stages"][name]["status"] == "done":
            assert f"] {name} (" in err2 and "done earlier" in _ends(err2)[name], err2


def _seconds(text: str) -> float:
    found = re.match(r"(?:(\d+) min )?(\d+) s\b", text.strip())
    assert found, text
    return 60 * int(found.group(1) or 0) + int(found.group(2))


def test_only_and_skip_choose_stages_and_a_missing_input_is_named(
    tiny_profile, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "study"
    code, _, err = _study(monkeypatch, capsys, tiny_model_dir, out, "--only", "dynamic,importance")
    ends = _ends(err)
    assert ends["detect"] == "skipped"
    assert ends["dynamic"].startswith("not run: needs the runs of detect; run that stage first"), ends
    assert re.match(r"\d+ s", ends["importance"]), ends
    assert code == 0
    code, _, err = _study(
        monkeypatch, capsys, tiny_model_dir, out, "--only", "detect,dynamic", "--skip", "report"
    )
    ends = _ends(err)
    assert re.match(r"\d+ s", ends["detect"]) and re.match(r"\d+ s", ends["dynamic"]), ends
    assert not (out / "report.html").exists()
    code, _, err = _study(monkeypatch, capsys, tiny_model_dir, out, "--only", "report")
    ends = _ends(err)
    assert {ends.pop("report")[0]} <= set("0123456789") and set(ends.values()) == {"skipped"}, err
    assert (out / "report.html").exists()
    code, _, err = _study(monkeypatch, capsys, tiny_model_dir, out, "--only", "detekt")
    assert code == 2 and "--only: no stage detekt. The stages: detect," in err


def test_the_profiles_name_real_config_fields():
    """Every override of the built-in profiles is a field of its stage's config: the stages build
    their configs from them (a misspelt field fails here, not an hour into a paper-sized run)."""
    from dataclasses import fields

    from babelheads.analysis.head_probes import ProbeSettings
    from babelheads.experiments.ablate import AblateConfig
    from babelheads.experiments.adapt import AdaptConfig
    from babelheads.experiments.compress import CompressConfig
    from babelheads.experiments.detect import DetectConfig
    from babelheads.experiments.dynamic_ablate import DynamicAblateConfig
    from babelheads.experiments.language_tests import EXPERIMENTS, LanguageTestConfig
    from babelheads.experiments.rag import RagConfig
    from babelheads.tasks.lm_texts import TextSettings
    from babelheads.tasks.niah import NiahSettings

    owners = {
        "detection": NiahSettings,
        "detect": DetectConfig,
        "ablate": AblateConfig,
        "cot": AblateConfig,
        "importance_texts": TextSettings,
        "language_tests": LanguageTestConfig,
        "adapt": AdaptConfig,
        "probe": ProbeSettings,
        "dynamic_ablate": DynamicAblateConfig,
        "dynamic_ablate_niah": NiahSettings,
        "rag": RagConfig,
        "compress": CompressConfig,
        "compress_niah": NiahSettings,
    }
    for profile in (DEFAULT, PAPER, TINY):
        assert set(profile.experiments) <= set(EXPERIMENTS)
        for stage, owner in owners.items():
            known = {field.name for field in fields(owner)}
            assert set(getattr(profile, stage)) <= known, (profile.name, stage)


def test_claims_and_report_read_a_study_directory(study, tmp_path, monkeypatch, capsys):
    out = study[0]
    code, stdout, err = run_cli(monkeypatch, capsys, "claims", str(out))
    assert code == 0, err
    assert "multilingual.f1_partial_sharing" in stdout and "lahis.ppl_specific" in stdout
    assert f"{out / 'detect'} (" not in stdout  # runs without a claims table are passed over
    assert "control/" not in stdout  # the controls' claims are in the control column
    code, stdout, err = run_cli(monkeypatch, capsys, "report", str(out), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "lahis.ppl_specific" in (tmp_path / "r.html").read_text()
    code, _, err = run_cli(monkeypatch, capsys, "claims", str(tmp_path))
    assert code == 2 and "is not a babelheads run" in err


def test_the_controls_stage_fills_the_control_column(study):
    out, _, _, err = study
    # The copies' retrieval study ran (a random model: its ablation has no heads to mask, said in one
    # line), and the runs its controls could make exist.
    for run in ("control/detect", "control/translation", "control/compare", "lt-ppl-control"):
        assert (out / run / "manifest.json").exists(), (run, err)
    from babelheads.runs import RunStore

    for run in ("compare", "lt-ppl"):
        claims = RunStore(out / run).derived("claims")
        assert (claims["control"] != "").all(), claims[["claim", "control"]]


def test_a_stage_of_an_earlier_version_is_named_and_leaves_a_resumed_record(
    study, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import shutil

    out = tmp_path / "study"
    shutil.copytree(study[0], out)
    record = json.loads((out / "study.json").read_text())
    record["stages"]["translate"] = {"name": "translate", "status": "done", "seconds": 72.0}
    (out / "study.json").write_text(json.dumps(record))
    code, _, err = _study(monkeypatch, capsys, tiny_model_dir, out, "--control", "--only", "report")
    assert code == 0, err
    resumed = json.loads((out / "study.json").read_text())["stages"]
    assert "translate" not in resumed
    assert resumed["detect"] == record["stages"]["detect"]  # the record was read, and kept what it had
    code, _, err = _study(monkeypatch, capsys, tiny_model_dir, out, "--only", "translate")
    assert code == 2 and "--only: no stage translate (translate is part of detect now)." in err, err
