"""Real behaviour of ablation and model comparison on the built-in models. Slower: marked ``real``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import naive_peaks

from babelheads.execution import Execution
from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.models import load_model
from babelheads.probe import Instrument
from babelheads.runner import greedy_decode
from babelheads.scoring import copy_events, retrieval_scores
from babelheads.tasks.niah import NiahSettings, NiahTask

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    task = NiahSettings(languages=("en",), lengths=(1000, 2000), depths=(0.25, 0.5, 0.75), needle_kind="key")
    config = DetectConfig(task=task, max_new_tokens=16)
    return detect(config, tmp_path_factory.mktemp("gemma-detect"), Execution(progress=False))


def test_masking_the_top_heads_hurts_far_more_than_masking_random_ones(gemma_run, tmp_path):
    config = AblateConfig(
        run=str(gemma_run.root),
        k=(3,),  # 3 heads score >= 0.1 here; a top-4 set is refused
        head_sets=("top", "random"),
        random_seeds=3,
        lengths=(1000,),
        depths=(0.25, 0.5, 0.75),
        needle_kind="key",
        max_new_tokens=12,
    )
    table = ablate(config, tmp_path / "ablate", Execution(progress=False)).derived("ablation")
    baseline = table.loc[table["head_set"] == "none", "accuracy"].item()
    top = table.loc[table["head_set"] == "top", "accuracy"].item()
    random = table.loc[table["head_set"] == "random", "accuracy"].mean()
    # K=3: the heads with a mean score >= 0.1 in this run (a top-4 set is refused). Evaluated on
    # held-out haystacks (seed 1); margins as on 2026-11-23, when top-4 gave 0.00 against 0.67 random.
    assert baseline == 1.0
    assert baseline - top >= 0.9, table
    assert (baseline - top) - (baseline - random) >= 0.5, table


def test_smollm2_is_an_instruct_model_prompted_with_its_chat_template():
    loaded = load_model("smollm2-135m", device="cpu")
    assert loaded.is_chat
    assert (loaded.layout.num_layers, loaded.layout.num_heads, loaded.layout.num_kv_heads) == (30, 9, 3)
    task = NiahTask(NiahSettings(languages=("en",), lengths=(400,), depths=(0.5,)))
    sample = task.build(loaded)[0]
    assert sample.text.startswith("<|im_start|>") and sample.text.rstrip().endswith("assistant")


def test_official_per_head_scores_are_reproduced_on_smollm2_with_50_greedy_steps():
    """The official code's protocol and copy rule, recomputed from eager attention with a cache (as its
    code does): every head's official score must equal the instrument's, on a fixed prompt."""
    loaded = load_model("smollm2-135m", device="cpu")
    task = NiahTask(NiahSettings(languages=("en",), lengths=(600,), depths=(0.5,), needle_kind="key"))
    sample = task.build(loaded)[0]
    ids = torch.tensor([sample.input_ids])
    instrument = Instrument(loaded.model, loaded.layout)
    decoded = greedy_decode(instrument, ids, 50)
    instrument.detach()
    start, end = sample.spans["answer"]
    ours = retrieval_scores(
        copy_events(decoded.records, decoded.tokens, sample.input_ids, sample.spans["needle"], (start, end)),
        (start, end),
    )["official"]
    tokens, peaks, _ = naive_peaks(loaded.model, ids, 50, use_cache=True)
    assert tokens == decoded.tokens
    official = np.zeros_like(ours)
    for token, step_peaks in zip(tokens, peaks, strict=True):
        for layer, heads in enumerate(step_peaks):
            for head, position in enumerate(heads):
                if start <= position < end and int(ids[0, position]) == token:
                    official[layer, head] += 1 / (end - start)
    assert official.max() > 0, "the fixed prompt must make some head copy"
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-12)


def test_the_two_builtin_models_compare_and_say_their_shapes_differ(gemma_run, tmp_path):
    smol = detect(
        DetectConfig(
            model="smollm2-135m",
            task=NiahSettings(languages=("en",), lengths=(600,), depths=(0.5,), needle_kind="key"),
            max_new_tokens=12,
        ),
        tmp_path / "smol",
        Execution(progress=False),
    )
    tables, notes = run_compare([gemma_run.root, smol.root], tmp_path / "cmp", CompareConfig(models=True))
    assert any("Head shapes differ" in note and "18 layers x 4 heads" in note for note in notes)
    assert set(tables["model_distribution"]["model"]) == {"gemma-3-270m", "smollm2-135m"}


def test_a_gguf_file_loads_directly_and_is_identified_by_its_hash():
    from babelheads.models import BUILTINS

    path = BUILTINS["smollm2-135m"].locate_gguf()
    loaded = load_model(str(path), device="cpu")
    assert loaded.identity["model"] == str(path.resolve())
    assert len(loaded.identity["sha256"]) == 64
    assert loaded.layout.describe().startswith("30 layers x 9 query heads (3 KV heads, head_dim 64)")
