"""Running the study: the stages chosen, one line per stage with its time, a failed stage reported
while the stages that do not need it go on, ``study.json`` recording each stage, and the report.

A stage recorded as done in ``study.json`` under the same settings is not run again when the study is
resumed (its runs would only be re-analysed); every other stage resumes its runs where they stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from babelheads.analysis.claims import with_controls
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.models import LoadedModel
from babelheads.report.html import build_report
from babelheads.runs import RunStore
from babelheads.sources import is_finished
from babelheads.study.config import StudyConfig
from babelheads.study.profiles import Profile, profile_named
from babelheads.study.stages import Context, Stage, stages

RECORD = "study.json"
ERRORS = "study-errors.log"
DONE, FAILED, NOT_RUN, SKIPPED = "done", "failed", "not run", "skipped"
REPORT = "report"


@dataclass
class StageResult:
    """status : done, failed, not run (an input is missing) or skipped (--only / --skip). seconds :
    the wall time it took this time (0 when it was done earlier)."""

    name: str
    status: str
    seconds: float = 0.0
    reason: str = ""
    earlier: bool = False
    """Done by an earlier invocation (study.json), so not run again."""
    runs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SharedModel(Execution):
    """The study's execution: every stage runs on one model, loaded once (its runs only read it:
    gradients go to gates, and each instrument replaces the last one's hooks)."""

    loaded: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, execution: Execution) -> SharedModel:
        return cls(**{entry.name: getattr(execution, entry.name) for entry in fields(Execution)})

    def load(self, model: str, dtype: str, chat: bool | None = None) -> LoadedModel:
        key = (model, dtype, chat)
        if key not in self.loaded:
            self.loaded.clear()  # one model in memory at a time
            self.loaded[key] = super().load(model, dtype, chat)
        return self.loaded[key]


MERGED = {"translate": "detect"}
"""Stages of earlier versions, and the stage that runs their runs now."""


def select_stages(all_stages: list[Stage], only: tuple[str, ...], skip: tuple[str, ...]) -> set[str]:
    """The names of the stages to run (with 'report' when it is to be written); one line for a name
    that is no stage."""
    names = [stage.name for stage in all_stages] + [REPORT]
    for option, given in (("--only", only), ("--skip", skip)):
        unknown = [name for name in given if name not in names]
        if unknown:
            merged = [f" ({name} is part of {MERGED[name]} now)" for name in unknown if name in MERGED]
            raise BabelheadsError(
                f"{option}: no stage {', '.join(unknown)}{''.join(merged)}. The stages: {', '.join(names)}."
            )
    chosen = set(only) if only else set(names)
    return chosen - set(skip)


def run_study(
    config: StudyConfig,
    out: Path,
    execution: Execution = DEFAULT_EXECUTION,
    say: Callable[[str], None] = print,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> tuple[Path | None, list[StageResult]]:
    """Run the chosen stages (each resumes), then the report; returns the report's path (None when no
    run exists to report on) and every stage's result."""
    profile = profile_named(config.profile)
    listed = stages(config, profile)
    chosen = select_stages(listed, only, skip)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    context = Context(config, profile, out, SharedModel.of(execution))
    digest = _digest(config, profile)
    known = {stage.name for stage in listed} | {REPORT}
    # A stage an earlier version had (translate, now part of detect) leaves the record.
    record = {name: entry for name, entry in _read_record(out, digest).items() if name in known}
    total = len(listed) + 1
    started = time.perf_counter()
    say(f"study of {config.model} ({profile.name} profile: {profile.about}) in {out}")
    results: dict[str, StageResult] = {}
    for number, stage in enumerate(listed, start=1):
        line = f"[{number}/{total}] {stage.name} ({stage.title})"
        result = _run_stage(stage, context, chosen, results, record, line, say)
        results[stage.name] = result
        if result.status != SKIPPED or stage.name not in record:  # a skipped stage keeps what it had
            record[stage.name] = asdict(result)
        _write_record(out, digest, config, record)
    if config.control:  # the claims' control column, whether or not the report is written now
        fill_controls(_reported_runs(listed, context), [context.run(name) for name in _control_runs(listed)])
    report, report_result = None, StageResult(REPORT, SKIPPED)
    if REPORT in chosen:
        line = f"[{total}/{total}] report (the claims of every paper and their figures)"
        say(f"{line} ...")
        tick = time.perf_counter()
        try:
            runs = _reported_runs(listed, context)
            report = build_report(runs, out / "report.html") if runs else None
            report_result = StageResult(
                REPORT, DONE if report else NOT_RUN, reason="" if report else "no runs"
            )
        except BabelheadsError as error:
            report_result = StageResult(REPORT, FAILED, reason=str(error))
        report_result.seconds = time.perf_counter() - tick
        say(_end_line(line, report_result))
    results[REPORT] = report_result
    record[REPORT] = asdict(report_result)
    elapsed = time.perf_counter() - started
    _write_record(out, digest, config, record, elapsed)
    say(_summary(list(results.values()), elapsed, report))
    return report, list(results.values())


def _run_stage(
    stage: Stage,
    context: Context,
    chosen: set[str],
    results: dict[str, StageResult],
    record: dict,
    line: str,
    say: Callable[[str], None],
) -> StageResult:
    if stage.name not in chosen:
        say(f"{line} ... skipped")
        return StageResult(stage.name, SKIPPED)
    earlier = record.get(stage.name, {})
    if earlier.get("status") == DONE and all(_finished(context.run(run)) for run in stage.runs):
        say(f"{line} ... done earlier ({format_seconds(earlier.get('seconds', 0.0))})")
        return StageResult(stage.name, DONE, earlier.get("seconds", 0.0), earlier=True, runs=list(stage.runs))
    missing = _missing_inputs(stage, context, results)
    if missing:
        result = StageResult(stage.name, NOT_RUN, reason=missing)
        say(_end_line(line, result))
        return result
    say(f"{line} ...")
    tick = time.perf_counter()
    try:
        stage.execute(context)
        result = StageResult(stage.name, DONE, runs=list(stage.runs))
    except BabelheadsError as error:
        result = StageResult(stage.name, FAILED, reason=str(error))
    except Exception as error:  # a bug in one stage must not take the others down; logged in full
        with open(context.out / ERRORS, "a", encoding="utf-8") as log:
            log.write(f"--- {stage.name}\n{traceback.format_exc()}\n")
        reason = f"{type(error).__name__}: {error} (traceback in {context.out / ERRORS})"
        result = StageResult(stage.name, FAILED, reason=reason)
    result.seconds = time.perf_counter() - tick
    say(_end_line(line, result))
    return result


def _missing_inputs(stage: Stage, context: Context, results: dict[str, StageResult]) -> str:
    """Why ``stage`` cannot run ('' when it can): an input stage failed, or its runs do not exist."""
    listed = {entry.name: entry for entry in stages(context.config, context.profile)}
    for need in stage.needs:
        status = results[need].status
        if status == FAILED:
            return f"needs {need}, which failed"
        if status == NOT_RUN:
            return f"needs {need}, which could not run"
        if status == SKIPPED and not all(_finished(context.run(run)) for run in listed[need].runs):
            return f"needs the runs of {need}; run that stage first (--only {need})"
    return ""


def _finished(path: Path) -> bool:
    store = RunStore(path)
    return store.exists() and is_finished(store, store.manifest()["spec"]["kind"])


def _reported_runs(listed: list[Stage], context: Context) -> list[Path]:
    """The finished runs of every stage but the controls, in stage order."""
    names = [run for stage in listed if stage.name != "controls" for run in stage.runs]
    return [context.run(name) for name in names if _finished(context.run(name))]


def study_runs(directory: Path) -> list[Path]:
    """The finished runs of a study directory (every stage's but the controls', in stage order), for
    the commands that read runs (claims, report); refused with one line if it is no study."""
    try:
        recorded = json.loads((Path(directory) / RECORD).read_text())
        config = StudyConfig(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in recorded["config"].items()
            }
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise BabelheadsError(
            f"{directory} is not a study directory ({RECORD} unreadable: {error}). Give run directories."
        ) from None
    listed = stages(config, profile_named(config.profile))
    context = Context(config, profile_named(config.profile), Path(directory), DEFAULT_EXECUTION)
    return _reported_runs(listed, context)


def _control_runs(listed: list[Stage]) -> tuple[str, ...]:
    return next((stage.runs for stage in listed if stage.name == "controls"), ())


def fill_controls(runs: list[Path], controls: list[Path]) -> None:
    """The claims of ``runs`` with their control column filled from the same claims on ``controls``."""
    found = [RunStore(path) for path in controls if (Path(path) / "claims.parquet").exists()]
    if not found:
        return
    control = pd.concat([store.derived("claims") for store in found], ignore_index=True)
    for path in runs:
        store = RunStore(path)
        if (store.root / "claims.parquet").exists():
            store.write_table("claims", with_controls(store.derived("claims"), control))


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s"


def _end_line(line: str, result: StageResult) -> str:
    if result.status == DONE:
        return f"{line} ... {format_seconds(result.seconds)}"
    if result.status == FAILED:
        return f"{line} ... failed after {format_seconds(result.seconds)}: {result.reason}"
    return f"{line} ... {result.status}: {result.reason}"


def _summary(results: list[StageResult], elapsed: float, report: Path | None) -> str:
    counts = {
        status: [result.name for result in results if result.status == status]
        for status in (DONE, FAILED, NOT_RUN)
    }
    parts = [f"{len(counts[DONE])} stages done"]
    parts += [f"{status}: {', '.join(names)}" for status, names in counts.items() if status != DONE and names]
    where = f"report: {report}" if report else "no report written"
    return f"study finished in {format_seconds(elapsed)} ({'; '.join(parts)}); {where}"


def _digest(config: StudyConfig, profile: Profile) -> str:
    """The settings and the profile's sizes: a stage done under other sizes is not 'done earlier'."""
    settings = {"config": asdict(config), "profile": asdict(profile)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_record(out: Path, digest: str) -> dict:
    """The stages an earlier invocation recorded under these settings (none under others)."""
    path = out / RECORD
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return dict(recorded.get("stages", {})) if recorded.get("digest") == digest else {}


def _write_record(
    out: Path, digest: str, config: StudyConfig, stages_: dict, elapsed: float | None = None
) -> None:
    record = {"digest": digest, "config": asdict(config), "stages": stages_}
    if elapsed is not None:
        record["seconds"] = elapsed
    temporary = out / (RECORD + ".tmp")
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, out / RECORD)
