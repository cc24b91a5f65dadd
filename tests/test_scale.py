"""Past one process: settings from files and runs, shards of one run, a device map, sweeps on Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_and_runs import FAST, assert_one_line_error, assert_same_tables, detect_args, run_cli, tables

from babelheads.runs import RunStore

ROOT = Path(__file__).resolve().parent.parent


def test_a_toml_or_yaml_config_gives_the_same_run_as_the_flags(tiny_model_dir, tmp_path, monkeypatch, capsys):
    flags, from_toml, from_yaml = tmp_path / "flags", tmp_path / "toml", tmp_path / "yaml"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, flags, "--languages", "en"))[0] == 0
    toml = tmp_path / "detect.toml"
    toml.write_text(
        f'model = "{tiny_model_dir}"\nlanguages = ["en"]\nlengths = [800, 1000]\ndepths = "0,0.5,1"\n'
        "max-new-tokens = 5\nquiet = true\n"
    )
    assert run_cli(monkeypatch, capsys, "detect", "--config", str(toml), "--out", str(from_toml))[0] == 0
    yaml = tmp_path / "detect.yaml"
    yaml.write_text(
        f"detect:\n  model: {tiny_model_dir}\n  languages: [en]\n  lengths: [800, 1000]\n"
        "  depths: [0, 0.5, 1]\n  max_new_tokens: 5\n  quiet: true\n"
    )
    assert run_cli(monkeypatch, capsys, "detect", "--config", str(yaml), "--out", str(from_yaml))[0] == 0
    assert_same_tables(tables(flags), tables(from_toml))
    assert_same_tables(tables(flags), tables(from_yaml))


def test_flags_win_over_the_config_and_unknown_settings_get_one_line(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{tiny_model_dir}"\nlanguages = "en,de"\n')
    out = tmp_path / "run"
    args = ["detect", "--config", str(config), "--languages", "de", "--out", str(out), *FAST]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    assert RunStore(out).manifest()["spec"]["config"]["task"]["languages"] == ["de"]
    config.write_text("langauges = 'en'\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "detect", "--config", str(config), "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, r"unknown setting 'langauges'.*Known settings: .*languages")
    config.write_text("languages = [\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "detect", "--config", str(config), "--out", str(tmp_path / "y")
    )
    assert_one_line_error(code, err, r"does not parse")


def test_from_run_replays_a_detection_and_a_flag_changes_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    first = tmp_path / "first"
    extra = ("--languages", "en", "--needle-kind", "key", "--top-k", "3")
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, first, *extra))[0] == 0
    replay = tmp_path / "replay"
    assert (
        run_cli(monkeypatch, capsys, "detect", "--from", str(first), "--out", str(replay), "--quiet")[0] == 0
    )
    assert RunStore(replay).manifest()["spec"] == RunStore(first).manifest()["spec"]
    assert_same_tables(tables(first), tables(replay))
    variant = tmp_path / "variant"
    args = ["detect", "--from", str(first), "--top-k", "2", "--out", str(variant), "--quiet"]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    assert RunStore(variant).manifest()["spec"]["config"]["top_k"] == 2
    code, _, err = run_cli(monkeypatch, capsys, "ablate", str(first), "--from", str(first))
    assert_one_line_error(code, err, r"that is a detect run; `babelheads ablate` replays ablate runs")


def test_two_shards_write_one_run_equal_to_the_whole(tiny_model_dir, tmp_path, monkeypatch, capsys):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, whole))[0] == 0
    code, out, _ = run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, sharded, "--shard", "0/2"))
    assert code == 0 and "shard 0/2 done" in out
    first = RunStore(sharded).finished()
    assert 0 < len(first) < len(RunStore(whole).finished())
    assert not (sharded / "scores.parquet").exists(), "half a run has no scores yet"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, sharded, "--shard", "1/2"))[0] == 0
    assert first.isdisjoint(RunStore(sharded).finished() - first)
    assert_same_tables(tables(whole), tables(sharded))
    code, _, err = run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, sharded, "--shard", "2/2"))
    assert_one_line_error(code, err, r"0 <= I < N")


def test_batch_size_and_prefix_sharing_do_not_change_a_run(tiny_model_dir, tmp_path, monkeypatch, capsys):
    plain, batched = tmp_path / "plain", tmp_path / "batched"
    args = ("--batch-size", "1", "--no-share-prefix")
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, plain, *args))[0] == 0
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, batched, "--batch-size", "5"))[0] == 0
    assert_same_tables(tables(plain), tables(batched))


def test_a_model_split_by_a_device_map_records_the_same_peaks(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """accelerate's hooks and an offloaded layer on CPU; a split over GPUs needs GPUs (see the README)."""
    whole, mapped = tmp_path / "whole", tmp_path / "mapped"
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, whole))[0] == 0
    assert run_cli(monkeypatch, capsys, *detect_args(tiny_model_dir, mapped, "--device-map", "auto"))[0] == 0
    assert_same_tables(tables(whole), tables(mapped))


def test_disk_offloaded_layers_go_through_the_instrument(tiny_model_dir):
    import torch

    from babelheads.models import load_model
    from babelheads.probe import Instrument
    from babelheads.runner import greedy_decode

    reference = load_model(str(tiny_model_dir), device="cpu")
    ids = torch.tensor([list(range(5, 60))])
    expected = greedy_decode(Instrument(reference.model, reference.layout), ids, 4)
    layers = reference.layout.num_layers
    device_map = {
        "model.embed_tokens": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    device_map |= {f"model.layers.{i}": "cpu" if i % 2 else "disk" for i in range(layers)}
    from transformers import AutoModelForCausalLM

    offloaded = AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir),
        attn_implementation="babelheads",
        device_map=device_map,
        offload_folder=str(Path(tiny_model_dir).parent / "offload"),
    )
    assert getattr(offloaded, "hf_device_map", None), "accelerate placed the layers"
    got = greedy_decode(Instrument(offloaded, reference.layout), ids, 4)
    assert got.tokens == expected.tokens
    assert (got.records.positions == expected.records.positions).all()


def _sweep_file(tmp_path: Path, model_dir: Path) -> Path:
    sweep = tmp_path / "sweep.toml"
    common = f'model = "{model_dir}"\nlengths = [800]\ndepths = [0, 1]\nmax-new-tokens = 4\n'
    sweep.write_text(
        f'[[job]]\ncommand = "detect"\nout = "{tmp_path / "en"}"\nlanguages = ["en"]\n{common}shards = 2\n'
        f'[[job]]\ncommand = "detect"\nout = "{tmp_path / "de"}"\nlanguages = ["de"]\n{common}'
        f'[[job]]\ncommand = "detect"\nout = "{tmp_path / "bad"}"\nlanguages = ["xx"]\n{common}'
    )
    return sweep


def test_a_sweep_on_a_local_ray_of_two_workers_reports_each_job(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    sweep = _sweep_file(tmp_path, tiny_model_dir)
    command = [sys.executable, "-m", "babelheads.cli", "sweep", str(sweep), "--workers", "2"]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert finished.returncode == 1, finished.stderr[-2000:]
    assert "3 of 4 jobs done, 1 failed:" in finished.stdout
    assert "bad" in finished.stdout and "xx" in finished.stdout, "the failure names its cause"
    assert "Traceback" not in finished.stdout
    for name in ("en", "de"):
        assert (tmp_path / name / "scores.parquet").exists(), f"{name}: every shard finished and scored"
    assert len(RunStore(tmp_path / "en").finished()) == 2, "1 length x 2 depths, each computed once"


def test_an_ablation_manifest_replays_to_the_ablate_flags(tmp_path):
    """No model needed: the manifest of an ablation (its task is a name, not NIAH settings) maps back
    to every ablate flag it came from, and each value parses as that flag."""
    from dataclasses import asdict

    import typer

    from babelheads import cli
    from babelheads.experiments.ablate import AblateConfig
    from babelheads.settings_files import replay_run

    config = AblateConfig(
        run="runs/detect", task="cot", k=(2, 4), lengths=(800,), phases="decode", problems=12
    )
    (tmp_path / "manifest.json").write_text(
        json.dumps({"spec": {"kind": "ablate", "config": asdict(config)}})
    )
    command = typer.main.get_command(cli.app).commands["ablate"]
    fields = {param.name for param in command.params if param.expose_value}
    flags = replay_run(tmp_path, "ablate", fields)
    assert flags["task"] == "cot" and flags["k"] == "2,4" and flags["lengths"] == "800"
    assert flags["phases"] == "decode" and flags["problems"] == 12 and flags["run"] == "runs/detect"
    assert flags["replicates"] == config.replicates  # an analysis setting, and a flag since the contract
    assert set(flags) <= fields, "settings without a flag are not invented"
    context = command.make_context("ablate", ["runs/detect"], default_map=flags)
    assert context.params["k"] == "2,4" and context.params["problems"] == 12


def test_an_unreachable_ray_address_gets_one_line_at_once(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'[[job]]\ncommand = "detect"\nout = "{tmp_path / "x"}"\n')
    code, _, err = run_cli(monkeypatch, capsys, "sweep", str(sweep), "--address", "127.0.0.1:1")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert lines[0] == f"1 job from {sweep}" and len(lines) == 2
    assert lines[1].startswith("error: No Ray cluster answers at 127.0.0.1:1. Check --address")
    code, _, err = run_cli(monkeypatch, capsys, "sweep", str(tmp_path / "missing.toml"))
    assert_one_line_error(code, err, r"Sweep file .*missing.toml not found")
