"""Resuming a run written with other package versions warns once, naming them; matching versions (or a
manifest that recorded none) do not."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from babelheads.execution import Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment
from babelheads.runs import RunStore, environment, version_differences, warn_if_versions_differ

PARTS = ["a", "b", "c"]


class Counting(Experiment):
    """A run without a model: three parts, each one row."""

    kind = "version-warning-toy"

    @property
    def seed(self) -> int:
        return 0

    def identity(self, execution: Execution) -> dict:
        return {"config": {"parts": PARTS}}

    def model(self) -> ModelChoice | None:
        return None

    def part_ids(self) -> list[str]:
        return PARTS

    def prepare(self, loaded: object) -> Prepared:
        return Prepared(parts=PARTS)

    def execute(self, store: RunStore, loaded: object, prepared: Prepared, execution: Execution) -> None:
        for part in prepared.parts:
            if part not in store.finished():
                store.append(part, {"samples": pd.DataFrame({"part": [part]})})

    def finalize(self, store: RunStore) -> None:
        store.write_table("parts", store.table("samples"))


def rewrite_environment(run: Path, change) -> None:
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def version_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "was written with" in str(w.message)]


def test_a_run_resumed_under_another_transformers_warns_once_naming_it(tmp_path):
    run = tmp_path / "x"
    run_experiment(Counting(), run)
    current = environment()["packages"]
    rewrite_environment(run, lambda m: m["environment"]["packages"].update(transformers="0.0.1"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_experiment(Counting(), run)
    messages = version_warnings(record)
    assert messages == [
        f"{run} was written with transformers 0.0.1, torch {current['torch']}; now transformers "
        f"{current['transformers']}: results may differ at numerical near-ties; rerun into a new --out "
        "to compare."
    ]
    assert [w.category for w in record if "was written with" in str(w.message)] == [UserWarning]


def test_a_run_resumed_mid_way_warns_once_not_per_part(tmp_path):
    run = tmp_path / "x"
    run_experiment(Counting(), run)
    rewrite_environment(run, lambda m: m["environment"]["packages"].update(torch="1.0.0"))
    for part in PARTS[1:]:  # two parts left to redo
        (run / "tables" / "samples" / f"{part}.parquet").unlink()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_experiment(Counting(), run)
    messages = version_warnings(record)
    assert len(messages) == 1 and "torch 1.0.0" in messages[0] and "transformers" in messages[0]
    assert RunStore(run).finished() == set(PARTS)


def test_matching_versions_and_an_old_manifest_do_not_warn(tmp_path):
    run = tmp_path / "x"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_experiment(Counting(), run)  # fresh
        run_experiment(Counting(), run)  # same versions: re-finalized quietly
    assert version_warnings(record) == []
    rewrite_environment(run, lambda m: m.pop("environment"))  # a manifest that recorded none
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_experiment(Counting(), run)
    assert version_warnings(record) == []


def test_version_differences_on_a_fake_manifest(tmp_path):
    now = {"python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "5.25.0", "gguf": None}}
    same = {"python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "5.25.0", "gguf": None}}
    assert version_differences(same, now) == []
    older = {"python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "5.24.0", "gguf": "0.10"}}
    # gguf is not installed now: not a difference
    assert version_differences(older, now) == [("transformers", "5.24.0", "5.25.0")]
    assert version_differences({"packages": {"transformers": "5.24.0"}}, now) == [
        ("transformers", "5.24.0", "5.25.0")
    ]  # no python recorded: not a difference
    assert version_differences(None, now) == []
    assert version_differences({"python": "3.12.1"}, now) == [("python", "3.12.1", "3.11.7")]

    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"spec": {"kind": "detect"}, "environment": older}))
    with pytest.warns(UserWarning) as record:
        assert warn_if_versions_differ(RunStore(run), now)
    assert [str(w.message) for w in record] == [
        f"{run} was written with transformers 5.24.0, torch 2.13.0; now transformers 5.25.0: results may "
        "differ at numerical near-ties; rerun into a new --out to compare."
    ]
    (run / "manifest.json").write_text(json.dumps({"spec": {"kind": "detect"}, "environment": now}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_versions_differ(RunStore(run), now)
