"""Real behaviour on the built-in Gemma 3 270M (the default model). Slower: marked ``real``."""

from __future__ import annotations

import pytest
import torch
from oracle import naive_peaks

from babelheads.execution import Execution
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.models import load_model
from babelheads.probe import Instrument
from babelheads.runner import greedy_decode
from babelheads.tasks.niah import NiahSettings, NiahTask

pytestmark = pytest.mark.real
LANGUAGES = ("en", "de")


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    task = NiahSettings(
        languages=LANGUAGES, lengths=(1000, 2000), depths=(0.25, 0.5, 0.75), needle_kind="key"
    )
    config = DetectConfig(task=task, max_new_tokens=16)
    store = detect(config, tmp_path_factory.mktemp("gemma-run"), Execution(progress=False))
    return store


def test_recorded_peaks_equal_eager_argmax_on_gemma(gemma):
    # 700 tokens: past the 512-token sliding window, so slot-to-position mapping is exercised.
    sample = NiahTask(NiahSettings(languages=("en",), lengths=(700,), depths=(0.5,))).build(gemma)[0]
    ids = torch.tensor([sample.input_ids])
    steps = 5
    instrument = Instrument(gemma.model, gemma.layout)
    decoded = greedy_decode(instrument, ids, steps, prefill_chunk=256)
    instrument.detach()
    tokens, peaks, rows = naive_peaks(gemma.model, ids, steps)
    assert decoded.tokens == tokens
    mismatches = 0
    for step in range(steps):
        for layer in range(gemma.layout.num_layers):
            for head in range(gemma.layout.num_heads):
                ours = int(decoded.records.positions[step, 0, layer, head, 0])
                eager = peaks[step][layer][head]
                row = rows[step][layer][head]
                if ours != eager and abs(float(row[ours]) - float(row[eager])) > 1e-5:
                    mismatches += 1
    assert mismatches == 0


def test_greedy_output_is_identical_with_and_without_the_instrument(gemma):
    task = NiahTask(NiahSettings(languages=("de",), lengths=(600,), depths=(0.5,), needle_kind="key"))
    ids = torch.tensor([task.build(gemma)[0].input_ids])
    instrument = Instrument(gemma.model, gemma.layout)
    ours = greedy_decode(instrument, ids, 12).tokens
    instrument.detach()
    gemma.model.set_attn_implementation("sdpa")
    try:
        reference = gemma.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    finally:
        gemma.model.set_attn_implementation("babelheads")
    assert ours == reference[0, ids.shape[1] :].tolist()


def test_needles_are_retrieved_at_every_depth_in_english_and_german(detection):
    samples = detection.table("samples")
    assert set(samples["language"]) == set(LANGUAGES)
    failed = samples.loc[~samples["success"], ["sample_id", "output"]]
    assert failed.empty, failed.to_string()


def test_retrieval_heads_are_sparse(detection):
    scores = detection.derived("scores")
    for language in LANGUAGES:
        share = (scores.loc[scores["language"] == language, "score"] >= 0.1).mean()
        assert 0 < share < 0.10, (language, share)


def test_top_heads_lie_in_full_attention_layers(detection, gemma):
    scores = detection.derived("scores")
    full = set(gemma.layout.full_attention_layers())
    assert full == {5, 11, 17}
    for language in LANGUAGES:
        top = scores[scores["language"] == language].nlargest(3, "score")
        assert set(top["layer"]) <= full, top
        assert (top["score"] >= 0.5).all(), top


def test_shared_prefixes_and_batches_give_the_plain_tokens_on_gemma(gemma, detection, tmp_path):
    """The detection run above ran shared and batched; the same samples one at a time from scratch
    (past the 512-token window: sliding layers restored from snapshots) give the same tokens and the
    same step-0 peaks, near-ties aside (at most one sample of twelve may part)."""
    from babelheads.probe import ProbeSettings
    from babelheads.runner import Job, RunSettings, run_jobs
    from babelheads.runs import RunStore

    task = NiahTask(
        NiahSettings(languages=LANGUAGES, lengths=(1000, 2000), depths=(0.25, 0.5, 0.75), needle_kind="key")
    )
    samples = [sample for sample in task.build(gemma) if hasattr(sample, "input_ids")]
    store = RunStore(tmp_path / "plain")
    store.create({"kind": "test"}, 0)
    settings = RunSettings(16, ProbeSettings(), batch_size=1, share_prefix=False)
    run_jobs(store, gemma, [Job(s.sample_id, s) for s in samples], task.score, settings, progress=False)
    shared, plain = (s.table("samples").set_index("sample_id")["output"] for s in (detection, store))
    assert len(plain) == len(samples) == len(shared)
    same = (shared.loc[plain.index] == plain).sum()
    assert same >= len(samples) - 1, f"{len(samples) - same} of {len(samples)} samples parted"
    first = {
        name: s.table("events").query("step == 0").set_index(["sample_id", "layer", "head"])["peak"]
        for name, s in (("shared", detection), ("plain", store))
    }
    agree = (first["shared"].loc[first["plain"].index] == first["plain"]).mean()
    assert agree >= 0.99, f"step-0 peaks agree on {agree:.3f} of heads"
