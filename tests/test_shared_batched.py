"""Shared-prefix prefill and batched decoding equal the plain path: one prompt at a time, from scratch.

On tiny fp64 models of every architecture (grouped-query attention, sliding windows that fill and
slide, softcap), same tokens and same recorded peaks, with per-row stops, per-row gates, a snapshot
budget of one, and prompts shorter than a window.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model

from babelheads.heads import HeadAddress
from babelheads.models import describe_heads
from babelheads.probe import HeadGates, Instrument, ProbeSettings
from babelheads.runner import Row, SharedPrefill, StopRule, decode_rows
from babelheads.runner.cache import new_cache
from babelheads.runner.prefix import branch_points, common_prefix

STEPS = 6


def _prompts() -> list[list[int]]:
    """NIAH-like prompts: one haystack, a needle inserted at several depths, two lengths, plus a
    prompt shorter than the tiny models' sliding windows and a one-token prompt."""
    rng = np.random.default_rng(0)
    hay = rng.integers(3, 400, 60).tolist()
    needle = [401, 402, 403]
    question = [404, 405]
    prompts = [
        hay[:depth] + needle + hay[depth:length] + question for length in (40, 60) for depth in (5, 20, 33)
    ]
    prompts.append(hay[:4] + question)
    prompts.append([7])
    prompts.append(list(prompts[1]))  # the same prompt twice (ablation: one prompt, several head sets)
    return prompts


def _model(kind: str) -> tuple[torch.nn.Module, Instrument]:
    model = tiny_model(kind).double()
    return model, Instrument(model, describe_heads(model), ProbeSettings(top_k=3))


def _plain(instrument, rows, stops, record=True):
    return [
        decode_rows(instrument, SharedPrefill(instrument.model, 16, share=False), [row], stops, record)[0]
        for row in rows
    ]


def _shared(instrument, rows, stops, batch, record=True, max_snapshots=8):
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i].input_ids))
    ordered = [rows[i] for i in order]
    keep = branch_points([row.input_ids[:-1] for row in ordered])
    prefill = SharedPrefill(instrument.model, 16, share=True, max_snapshots=max_snapshots)
    results = []
    for start in range(0, len(ordered), batch):
        results += decode_rows(
            instrument, prefill, ordered[start : start + batch], stops, record, keep[start : start + batch]
        )
    out = [None] * len(rows)
    for index, result in zip(order, results, strict=True):
        out[index] = result
    return out, prefill


def _assert_same(plain, shared):
    for expected, got in zip(plain, shared, strict=True):
        assert got.tokens == expected.tokens
        if expected.records is None:
            continue
        assert got.records.positions.shape == expected.records.positions.shape
        np.testing.assert_array_equal(got.records.positions, expected.records.positions)
        np.testing.assert_allclose(got.records.weights, expected.records.weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("batch", [1, 4])
def test_shared_prefixes_and_batches_give_the_plain_tokens_and_peaks(kind, batch):
    _, instrument = _model(kind)
    prompts = _prompts()
    rows = [Row(prompt, STEPS - (index % 3)) for index, prompt in enumerate(prompts)]
    plain = _plain(instrument, rows, StopRule())
    shared, prefill = _shared(instrument, rows, StopRule(), batch)
    _assert_same(plain, shared)
    total = sum(len(prompt) - 1 for prompt in prompts)
    assert prefill.computed_tokens < 0.6 * total, "shared prefixes are computed once"
    assert prefill.computed_tokens + prefill.reused_tokens >= total


@pytest.mark.parametrize("kind", ["gemma3", "mistral"])
def test_one_snapshot_recomputes_what_it_dropped_and_still_matches(kind):
    _, instrument = _model(kind)
    rows = [Row(prompt, STEPS) for prompt in _prompts()]
    plain = _plain(instrument, rows, StopRule())
    shared, prefill = _shared(instrument, rows, StopRule(), 3, max_snapshots=1)
    _assert_same(plain, shared)
    assert len(prefill.snapshots) <= 1


def test_rows_stop_on_their_own_tokens_and_leave_the_batch():
    _, instrument = _model("llama")
    rows = [Row(prompt, STEPS) for prompt in _prompts()[:6]]
    free = _plain(instrument, rows, StopRule())
    emitted = [set(result.tokens) for result in free]
    candidates = [t for t in set.union(*emitted) if any(t not in seen for seen in emitted)]
    stop = next(t for t in candidates if any(t in r.tokens[1:] and t != r.tokens[0] for r in free))
    stops = StopRule(stop_ids=frozenset({stop}))
    plain = _plain(instrument, rows, stops)
    shared, _ = _shared(instrument, rows, stops, 6)
    _assert_same(plain, shared)
    lengths = [len(result.tokens) for result in shared]
    assert min(lengths) < STEPS and max(lengths) == STEPS, "some rows stop early, others run on"
    assert [result.records.positions.shape[0] for result in shared] == lengths


@pytest.mark.parametrize(
    ("phases", "mode"),
    [(("decode",), "scale"), (("decode",), "uniform"), (("prefill", "decode"), "scale")],
)
def test_head_sets_decoded_in_one_batch_equal_each_set_alone(phases, mode):
    _, instrument = _model("gemma3")
    layout = instrument.layout
    prompt = _prompts()[4]
    sets = [[], [HeadAddress(0, 0)], [HeadAddress(1, 1), HeadAddress(2, 0)], [HeadAddress(3, 2)]]
    rows = [
        Row(prompt, STEPS, HeadGates.mask(layout, heads, phases, mode) if heads else None) for heads in sets
    ]
    plain = _plain(instrument, rows, StopRule())
    if "prefill" in phases:  # different prefills: one batch of rows each prefilled under its own gates
        shared = decode_rows(
            instrument, SharedPrefill(instrument.model, 16, share=False), rows, StopRule(), True
        )
    else:
        shared, prefill = _shared(instrument, rows, StopRule(), 4)
        assert prefill.computed_tokens == len(prompt) - 1, "decode-only masks share one prefill"
    _assert_same(plain, shared)
    assert len({tuple(result.tokens) for result in plain}) > 1, "the masks change something"


def test_padded_slots_are_never_peaks():
    _, instrument = _model("llama")
    rows = [Row([5, 6], 2), Row(_prompts()[5], 2)]
    shared = decode_rows(instrument, SharedPrefill(instrument.model, 16), rows, StopRule(), True)
    positions = shared[0].records.positions
    assert positions.min() == -1 and positions.max() < 3, "the short row sees only its own 2-3 keys"
    assert (shared[0].records.weights[positions == -1] == 0).all()


def test_branch_points_are_running_minima_of_adjacent_common_prefixes():
    prefixes = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [1, 7], [8]]
    assert [common_prefix(a, b) for a, b in itertools.pairwise(prefixes)] == [3, 2, 1, 0]
    assert branch_points(prefixes) == [{3, 2, 1, 0}, {2, 1, 0}, {1, 0}, {0}, set()]


def test_a_fresh_cache_has_the_models_sliding_layers():
    model, _ = _model("gemma3")
    kinds = [getattr(layer, "is_sliding", False) for layer in new_cache(model).layers]
    assert kinds == [True, True, False, True]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_a_prefill_fills_the_cache_the_whole_model_fills_without_computing_logits(kind):
    """The prefill runs the decoder body only (the LM head's logits would be thrown away): its cache
    equals the one the whole model, with the reference attention, fills in one pass (to float64
    rounding; gemma2's reference is eager attention with its softcap, the instrument's is not)."""
    from tiny_models import reference_attention

    model, _ = _model(kind)
    reference = tiny_model(kind, reference_attention(kind)).double()
    prompt = _prompts()[4]  # longer than the tiny models' sliding windows
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    try:
        cache = SharedPrefill(model, prefill_chunk=7, share=False).prefill(prompt)
    finally:
        handle.remove()
    assert calls == [], "the LM head ran during a prefill"
    expected = reference(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values
    for got, want in zip(cache.layers, expected.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)


def test_the_default_batch_keeps_its_kv_cache_within_half_of_the_free_memory(monkeypatch):
    import babelheads.runner.jobs as jobs
    from babelheads.runner import RunSettings

    cpu = torch.device("cpu")
    monkeypatch.setattr(jobs, "free_memory", lambda device: 10 * 2**30)
    assert RunSettings().rows_per_batch(cpu, 2**20) == jobs.DEFAULT_BATCH_SIZE["cpu"]
    assert RunSettings().rows_per_batch(cpu, 2**30) == 5  # 1 GiB rows: half of 10 GiB holds 5
    assert RunSettings().rows_per_batch(cpu, 64 * 2**30) == 1  # one row even where none fits
    assert RunSettings(batch_size=3).rows_per_batch(cpu, 64 * 2**30) == 3  # the user's stands
    monkeypatch.setattr(jobs, "free_memory", lambda device: None)
    assert RunSettings().rows_per_batch(cpu, 64 * 2**30) == jobs.DEFAULT_BATCH_SIZE["cpu"]
    monkeypatch.undo()
    assert jobs.free_memory(cpu) is None or jobs.free_memory(cpu) > 0
