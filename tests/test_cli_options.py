"""Options shared by the commands: every command that runs a model takes them with one spelling and one
help text, and --shard splits any kind of run into workers whose tables equal one unsharded run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from test_cli_and_runs import run_cli
from typer.testing import CliRunner

from babelheads.cli import app
from babelheads.runs import RunStore

GROUP = typer.main.get_command(app)
MODEL_COMMANDS = (
    "detect",
    "ablate",
    "importance",
    "language-test",
    "adapt",
    "dynamic",
    "dynamic-ablate",
    "rag",
    "compress",
)
SHARED = ("--device", "--dtype", "--batch-size", "--shard", "--quiet", "--config", "--from")
# These run on the model and precision of the run whose heads they test; their configs have no dtype.
NO_DTYPE = {"ablate", "language-test", "adapt"}


def shared_options(command: str) -> tuple[str, ...]:
    return tuple(option for option in SHARED if not (option == "--dtype" and command in NO_DTYPE))


def option_help(command: str, flag: str) -> str:
    [param] = [param for param in GROUP.commands[command].params if flag in param.opts]
    return param.help


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_lists_the_shared_options(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in shared_options(command):
        assert option in result.output, f"{command} --help lacks {option}"


@pytest.mark.parametrize("option", SHARED)
def test_a_shared_option_reads_the_same_in_every_command(option: str) -> None:
    helps = {
        command: option_help(command, option)
        for command in MODEL_COMMANDS
        if option in shared_options(command)
    }
    assert len(set(helps.values())) == 1, helps


def test_dynamic_stats_reads_a_config_file() -> None:
    assert "--config" in {opt for param in GROUP.commands["dynamic-stats"].params for opt in param.opts}


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every per-part table (sorted by part id, rows in computed order) and every derived table. None holds
    timings, so two computations of a run compare whole."""
    store = RunStore(out)
    names = sorted(path.name for path in (out / "tables").iterdir())
    per_part = {name: store.table(name) for name in names}
    derived = {path.stem: store.derived(path.stem) for path in sorted(out.glob("*.parquet"))}
    return {**per_part, **derived}


def assert_shards_equal_one_run(monkeypatch, capsys, tmp_path: Path, args: list[str]) -> None:
    """Worker 1/2 then 0/2 into one directory give the tables of one unsharded run; only the worker that
    finishes the last part prints the summary."""
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(whole))
    assert code == 0, err
    code, text, err = run_cli(monkeypatch, capsys, *args, "--out", str(sharded), "--shard", "1/2")
    assert code == 0, err
    assert "shard 1/2 done" in text and "run written to" not in text
    parts = RunStore(sharded).recorded_parts()
    assert 0 < len(RunStore(sharded).finished()) < len(parts)
    code, text, err = run_cli(monkeypatch, capsys, *args, "--out", str(sharded), "--shard", "0/2")
    assert code == 0, err
    assert "run written to" in text
    assert RunStore(sharded).finished() == set(parts)
    expected, got = tables(whole), tables(sharded)
    assert list(got) == list(expected)
    for name, table in expected.items():
        if name == "claims":  # each row names the run directory it was measured in
            got[name], table = got[name].drop(columns="run"), table.drop(columns="run")
        pd.testing.assert_frame_equal(got[name], table, obj=name)


def test_compress_shards(tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    rng = np.random.default_rng(0)
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps({f"{layer}-{head}": [float(rng.random())] for layer in range(3) for head in range(4)})
    )
    args = [
        "compress",
        "--heads",
        str(scores),
        "--model",
        str(tiny_model_dir),
        "--languages",
        "en",
        "--lengths",
        "1200",
        "--depths",
        "0.3,0.7",
        "--needles-per-cell",
        "1",
        "--sink",
        "4",
        "--window",
        "16",
        "--shares",
        "0.5",
        "--max-new-tokens",
        "4",
        "--replicates",
        "50",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert_shards_equal_one_run(monkeypatch, capsys, tmp_path, args)


def test_importance_shards(tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    args = [
        "importance",
        "--model",
        str(tiny_model_dir),
        "--languages",
        "en,de",
        "--texts",
        "2",
        "--window",
        "64",
        "--percentile",
        "70",
        "--min-languages",
        "2",
        "--share",
        "0.1",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert_shards_equal_one_run(monkeypatch, capsys, tmp_path, args)


def test_rag_shards(tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    args = [
        "rag",
        "--model",
        str(tiny_model_dir),
        "--languages",
        "en",
        "--count",
        "2",
        "--selections",
        "dragin,none",
        "--threshold",
        "0",
        "--retrievals",
        "1",
        "--max-new-tokens",
        "6",
        "--replicates",
        "50",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert_shards_equal_one_run(monkeypatch, capsys, tmp_path, args)


def test_every_kind_in_the_registry_has_its_command_and_a_sweepable_one_takes_what_a_sweep_passes():
    """A sweep runs `COMMAND --out OUT --quiet [--shard I/N]`; --from needs the command to exist."""
    import typer

    from babelheads import cli
    from babelheads.kinds import REGISTRY

    commands = typer.main.get_command(cli.app).commands
    for kind in REGISTRY.values():
        assert kind.command in commands, kind
        names = {param.name for param in commands[kind.command].params}
        if kind.sweepable:
            assert {"out", "quiet", "shard"} <= names, kind
