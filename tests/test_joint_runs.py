"""Runs decoded together (one walk over the prompts of several runs) equal the same runs decoded
alone, table for table, while the prompt prefixes they share are prefilled once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from babelheads.errors import BabelheadsError
from babelheads.execution import Execution
from babelheads.experiments.detect import DetectConfig, detect, detect_together
from babelheads.runner.prefix import SharedPrefill
from babelheads.runs import TABLES, RunStore
from babelheads.tasks.niah import NiahSettings

GRID = NiahSettings(languages=("en", "de"), lengths=(400,), depths=(0.2, 0.6), needles_per_cell=1)
TRANSLATION = replace(GRID, languages=(), pairs=("en:de",))
EXECUTION = Execution(device="cpu", progress=False, batch_size=2)


def _configs(model) -> list[DetectConfig]:
    return [
        DetectConfig(model=str(model), task=GRID, max_new_tokens=5, hidden_states=True),
        DetectConfig(model=str(model), task=TRANSLATION, max_new_tokens=4),
    ]


@pytest.fixture
def prefilled(monkeypatch) -> list[int]:
    """Every token a prefill computes, counted over the whole test."""
    computed = [0]
    extend = SharedPrefill._extend

    def counting(self, prefix, start, end):
        computed[0] += max(end - start, 0)
        return extend(self, prefix, start, end)

    monkeypatch.setattr(SharedPrefill, "_extend", counting)
    return computed


def _has(root, table: str) -> bool:
    return (root / TABLES / table).is_dir()


def _tables(root) -> dict[str, pd.DataFrame]:
    """Every table the run wrote (rows in sample order), without the timings; hidden states as
    numbers (rows batched with other rows differ from rows batched alone in the last float bits)."""
    store = RunStore(root)
    tables = {
        name: store.table(name).drop(columns=["seconds"], errors="ignore")
        for name in sorted(path.name for path in (root / TABLES).iterdir())
    }
    if "hidden" in tables:
        states = np.stack([np.frombuffer(state, np.float32) for state in tables["hidden"].pop("state")])
        tables["hidden"] = pd.concat([tables["hidden"], pd.DataFrame(states)], axis=1)
    return tables


def test_runs_decoded_together_equal_each_run_alone_and_share_their_prefills(
    tiny_model_dir, tmp_path, prefilled
):
    alone = [tmp_path / "alone" / name for name in ("detect", "translation")]
    for config, out in zip(_configs(tiny_model_dir), alone, strict=True):
        detect(config, out, EXECUTION)
    computed_alone, prefilled[0] = prefilled[0], 0
    together = [tmp_path / "together" / name for name in ("detect", "translation")]
    detect_together(list(zip(_configs(tiny_model_dir), together, strict=True)), EXECUTION)

    for first, second in zip(alone, together, strict=True):
        expected, got = _tables(first), _tables(second)
        assert set(expected) == set(got), second.name
        for name, table in expected.items():
            pd.testing.assert_frame_equal(table, got[name], check_exact=False, rtol=1e-4, atol=1e-5)
        assert RunStore(second).derived("scores").equals(RunStore(first).derived("scores"))
    # Only the run that asked for hidden states has them; the other's rows were dropped, not written.
    assert _has(together[0], "hidden") and not _has(together[1], "hidden")
    # A translation prompt is its English detection prompt up to the question: computed once.
    english = RunStore(alone[0]).table("samples")["language"].eq("en").sum()
    assert english > 0 and prefilled[0] < computed_alone - english * 300, (prefilled[0], computed_alone)


def test_a_finished_run_is_left_as_it_is_and_the_other_resumes(tiny_model_dir, tmp_path):
    detection, translation = _configs(tiny_model_dir)
    detect(detection, tmp_path / "detect", EXECUTION)
    before = (tmp_path / "detect" / "manifest.json").read_text()
    stores = detect_together(
        [(detection, tmp_path / "detect"), (translation, tmp_path / "translation")], EXECUTION
    )
    assert (tmp_path / "detect" / "manifest.json").read_text() == before
    assert all(not store.derived("scores").empty for store in stores)


def test_a_refused_run_writes_nothing_for_either(tiny_model_dir, tmp_path):
    detection, translation = _configs(tiny_model_dir)
    detect(replace(detection, top_k=2), tmp_path / "detect", EXECUTION)  # another run at that path
    with pytest.raises(BabelheadsError):
        detect_together(
            [(translation, tmp_path / "translation"), (detection, tmp_path / "detect")], EXECUTION
        )
    assert not (tmp_path / "translation").exists()
