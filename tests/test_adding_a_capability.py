"""Adding a capability touches no existing module: a toy kind of run (an experiment, its analysis, a
report section and a thin command) written here and registered, then used as a user would.

The toy asks the NIAH prompts of a language and records how many tokens each answer took; its
analysis is the mean per language with an interval. What it must get from the contract alone:
resume, --from, sharding, a refused model of another run, analysis settings that re-analyse without
re-running, a report section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import pandas as pd
import pytest
import typer
from test_cli_and_runs import run_cli

from babelheads.analysis.aggregate import completed
from babelheads.cli.app import app
from babelheads.cli.options import FromRun, Model, Out, Quiet, Replicates, Seed, Shard, _execution
from babelheads.execution import Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment
from babelheads.kinds import REGISTRY, Kind, register
from babelheads.models import LoadedModel, resolved_precision
from babelheads.report.base import SECTIONS, Page, ReportSection, Run, Section, register_section
from babelheads.report.figures import Figure
from babelheads.runner import Job, run_jobs
from babelheads.runs import RunStore
from babelheads.tasks.niah import NiahSettings, NiahTask


@dataclass(frozen=True)
class ToyConfig:
    model: str
    niah: NiahSettings = field(default_factory=lambda: NiahSettings(lengths=(800,), depths=(0.5,)))
    replicates: int = 100


def answer_lengths(samples: pd.DataFrame, replicates: int) -> pd.DataFrame:
    """The toy's analysis: mean answer length per language, and a bootstrap interval."""
    import numpy as np

    rows = []
    for language, group in samples.groupby("language"):
        steps = group["steps"].to_numpy(float)
        draws = np.random.default_rng(0).choice(steps, (replicates, len(steps))).mean(axis=1)
        rows.append(
            {
                "language": language,
                "value": steps.mean(),
                "lo": np.percentile(draws, 2.5),
                "hi": np.percentile(draws, 97.5),
                "n": len(steps),
            }
        )
    return pd.DataFrame(rows)


class Toy(Experiment):
    kind = "toy"
    analysis_fields = ("replicates",)

    def __init__(self, config: ToyConfig):
        self.config = config
        self.task = NiahTask(config.niah)

    @property
    def seed(self) -> int:
        return self.config.niah.seed

    def identity(self, execution: Execution) -> dict:
        config = {k: v for k, v in asdict(self.config).items() if k not in self.analysis_fields}
        return {
            "config": config,
            "data": self.task.identity(),
            "precision": resolved_precision("auto", "cpu"),
        }

    def model(self) -> ModelChoice:
        return ModelChoice(self.config.model, "auto")

    def part_ids(self) -> list[str]:
        return self.task.sample_ids()

    def prepare(self, loaded: LoadedModel) -> Prepared:
        return Prepared(self.task.sample_ids(), {}, self.task.build(loaded))

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        jobs = [Job(sample.sample_id, sample) for sample in prepared.state]
        run_jobs(store, loaded, jobs, self.task.score, execution.run_settings(3), execution.progress, "toy")

    def finalize(self, store: RunStore) -> None:
        table = answer_lengths(completed(store.table("samples")), self.config.replicates)
        store.write_derived("answer_lengths", table)


def toy_command(
    model: Model = "gemma-3-270m",
    out: Out = Path("runs/toy"),
    seed: Seed = 0,
    replicates: Replicates = 100,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    languages: Annotated[str, typer.Option()] = "en,de",
    from_run: FromRun = None,
) -> None:
    """The toy: how long the answers are."""
    codes = tuple(languages.split(","))
    config = ToyConfig(
        model, NiahSettings(languages=codes, lengths=(800,), depths=(0.5,), seed=seed), replicates
    )
    store = run_experiment(Toy(config), out, _execution("cpu", quiet, shard=shard))
    typer.echo(f"toy written to {store.root}")


def replay_toy(manifest: dict, run: Path) -> dict:
    """--from: the manifest's settings as the toy command's flags."""
    config = manifest["spec"]["config"]
    return {**config["niah"], "model": config["model"]}


def toy_section(run: Run, page: Page) -> list[Section]:
    table = run.store.derived("answer_lengths")
    figure = Figure("Answer lengths", "Mean tokens per answer, per language.", table)
    return [Section(f"Toy run {run.path.name}", summary=table.to_string(), figures=[figure])]


@pytest.fixture
def toy_registered():
    """Registers the toy as a capability module would, and removes it after the test."""
    register(Kind("toy", "toy", replay_toy, sweepable=True))
    register_section(
        ReportSection("toy", lambda store, config: list(config["niah"]["languages"]), toy_section)
    )
    app.command("toy")(toy_command)
    yield
    REGISTRY.pop("toy")
    SECTIONS.pop("toy")
    app.registered_commands[:] = [c for c in app.registered_commands if c.name != "toy"]


def test_a_toy_capability_runs_resumes_replays_shards_and_reports(
    toy_registered, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "toy"
    args = ["toy", "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    # Two workers, each its block of the samples; the last one to finish writes the tables.
    assert run_cli(monkeypatch, capsys, *args, "--shard", "1/2")[0] == 0
    assert not RunStore(out).has_derived("answer_lengths")
    assert run_cli(monkeypatch, capsys, *args, "--shard", "0/2")[0] == 0
    store = RunStore(out)
    first = store.derived("answer_lengths")
    assert set(first["language"]) == {"en", "de"} and (first["n"] > 0).all()

    parts = sorted((out / "tables" / "samples").glob("*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in parts]
    # An analysis setting re-analyses the finished run; no part is run again.
    assert run_cli(monkeypatch, capsys, *args, "--replicates", "50")[0] == 0
    assert [path.stat().st_mtime_ns for path in parts] == stamps
    # --from replays its settings: the same run, found finished.
    code, _, err = run_cli(monkeypatch, capsys, "toy", "--from", str(out), "--out", str(out), "--quiet")
    assert code == 0, err
    assert [path.stat().st_mtime_ns for path in parts] == stamps
    # Another kind's --out is named as such, before any model loads.
    code, _, err = run_cli(monkeypatch, capsys, "detect", "--model", str(tiny_model_dir), "--out", str(out))
    assert code == 2 and "holds a toy run, not a detect run" in err

    report = tmp_path / "report.html"
    code, _, err = run_cli(monkeypatch, capsys, "report", str(out), "-o", str(report))
    assert code == 0, err
    assert "Toy run toy" in report.read_text()


def test_the_toy_is_refused_a_source_of_another_model(toy_registered, tiny_model_dir, tmp_path):
    """The contract checks every source run against the model loaded, whatever the kind."""
    from babelheads.errors import BabelheadsError
    from babelheads.sources import Source

    class ToyWithSource(Toy):
        def sources(self) -> list[Source]:
            store = RunStore(tmp_path / "elsewhere")
            store.create({"kind": "detect", "model": {"model": "another"}}, 0)
            return [Source(store, store.manifest(), "--heads")]

    with pytest.raises(BabelheadsError, match="was run on another model"):
        run_experiment(
            ToyWithSource(ToyConfig(str(tiny_model_dir))), tmp_path / "toy", Execution("cpu", progress=False)
        )
    assert not (tmp_path / "toy").exists()
