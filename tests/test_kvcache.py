"""The head-compressed KV cache against references: the normal cache when nothing is evicted, and an
eager oracle that hides each KV head's evicted positions inside an ordinary cache when something is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from babelheads.kvcache.cache import (
    HeadCompressedLayer,
    analytic_bytes,
    compressed_layers,
    compressible_cache,
    storage_bytes,
)
from babelheads.models import describe_heads
from babelheads.probe import Instrument
from babelheads.probe.buckets import Bucket, query_heads
from babelheads.probe.eager import eager_attention
from babelheads.runner.cache import cache_argument

CONTEXT, QUESTION, STEPS = 30, 6, 5
EVICTED: dict[int, torch.Tensor] = {}
"""Oracle state: per layer, (kv_heads, CONTEXT) True where a context position is evicted."""


CAPTURED: dict[int, torch.Tensor] = {}
"""Oracle weights per layer (heads, queries, keys), when a test asks for them."""


def _oracle(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention over an ordinary cache, each KV head's evicted context positions hidden from
    the queries past the context (the context itself was prefilled before anything was evicted)."""
    group = query.shape[1] // key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is None:
        positions = torch.arange(kv_len - q_len, kv_len)
        mask = (torch.arange(kv_len).view(1, -1) <= positions.view(-1, 1)).view(1, 1, q_len, kv_len)
    assert mask.dtype == torch.bool, "the oracle expects a boolean mask"
    hidden = EVICTED.get(module.layer_idx)
    if hidden is not None and kv_len >= CONTEXT:
        past = (torch.arange(kv_len - q_len, kv_len) >= CONTEXT).view(1, 1, q_len, 1)
        evicted = torch.zeros(query.shape[1], kv_len, dtype=torch.bool)
        evicted[:, :CONTEXT] = hidden.repeat_interleave(group, dim=0)
        mask = mask & ~(past & evicted.view(1, -1, 1, kv_len))
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    output, weights = eager_attention(
        query, key, value, mask, scale, kwargs.get("softcap"), kwargs.get("s_aux"), keep_weights=True
    )
    CAPTURED[module.layer_idx] = weights[0]
    return output, None


AttentionInterface.register("evicted_oracle", _oracle)
AttentionMaskInterface.register("evicted_oracle", sdpa_mask)


def _forward(model, cache, ids, start):
    return model(
        input_ids=torch.tensor([ids]),
        position_ids=torch.arange(start, start + len(ids)).unsqueeze(0),
        **{cache_argument(type(model)): cache},
        use_cache=True,
    ).logits[0]


def _keep(
    model, cache, full_heads: set[int], sink: int = 3, window: int = 5
) -> dict[int, list[torch.Tensor]]:
    """Per compressed layer: KV heads in ``full_heads`` keep every context position, the others sink +
    window."""
    partial = torch.cat([torch.arange(sink), torch.arange(CONTEXT - window, CONTEXT)])
    return {
        index: [
            torch.arange(CONTEXT) if head in full_heads else partial for head in range(layer.keys.shape[1])
        ]
        for index, layer in compressed_layers(cache).items()
    }


def _run_compressed(model, ids, full_heads, **window):
    cache = compressible_cache(model)
    with torch.no_grad():
        _forward(model, cache, ids[:CONTEXT], 0)
        keep = _keep(model, cache, full_heads, **window)
        for index, positions in keep.items():
            compressed_layers(cache)[index].compress(positions)
        logits = _forward(model, cache, ids[CONTEXT:], CONTEXT)
    return cache, keep, logits


def _run_oracle(model, ids, keep):
    previous = model.config._attn_implementation
    model.set_attn_implementation("evicted_oracle")
    try:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            _forward(model, cache, ids[:CONTEXT], 0)
            EVICTED.clear()
            for index, positions in keep.items():
                hidden = torch.ones(len(positions), CONTEXT, dtype=torch.bool)
                for head, kept in enumerate(positions):
                    hidden[head, kept] = False
                EVICTED[index] = hidden
            return _forward(model, cache, ids[CONTEXT:], CONTEXT)
    finally:
        EVICTED.clear()
        model.set_attn_implementation(previous)


def _normal_logits(model, ids):
    """The question's logits over transformers' own cache: the reference when nothing is evicted."""
    normal = DynamicCache(config=model.config)
    with torch.no_grad():
        _forward(model, normal, ids[:CONTEXT], 0)
        return _forward(model, normal, ids[CONTEXT:], CONTEXT)


def _ids(seed: int = 0) -> list[int]:
    return torch.randint(
        3, 500, (CONTEXT + QUESTION + STEPS,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_every_head_full_gives_exactly_the_normal_caches_logits(kind):
    model = tiny_model(kind)
    ids = _ids()
    every = set(range(describe_heads(model).num_kv_heads))
    cache, _, logits = _run_compressed(model, ids, every)
    assert not any(layer.compressed for layer in compressed_layers(cache).values())
    assert torch.equal(logits, _normal_logits(model, ids))


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_a_window_as_long_as_the_context_gives_the_normal_logits(kind):
    model = tiny_model(kind)
    ids = _ids(1)
    _, _, logits = _run_compressed(model, ids, set(), sink=0, window=CONTEXT)
    assert torch.equal(logits, _normal_logits(model, ids))


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_evicted_positions_vanish_for_their_head_only(kind):
    """Questions tokens (several at once, causal among themselves) and later steps see exactly the
    positions their KV head kept, on full-attention layers; sliding layers keep their window."""
    model = tiny_model(kind)
    ids = _ids(2)
    cache, keep, logits = _run_compressed(model, ids, {0})
    expected = _run_oracle(model, ids, keep)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=2e-5)
    if keep and describe_heads(model).num_kv_heads > 1:
        assert any(layer.compressed for layer in compressed_layers(cache).values())


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_stored_bytes_equal_the_analytic_count_and_shrink_by_what_was_evicted(kind):
    model = tiny_model(kind)
    ids = _ids(3)
    layout = describe_heads(model)
    full, _, _ = _run_compressed(model, ids, set(range(layout.num_kv_heads)))
    small, keep, _ = _run_compressed(model, ids, set())
    for cache in (full, small):
        assert storage_bytes(cache) == analytic_bytes(cache)
    per_position = 2 * layout.head_dim * 4  # K and V, float32
    evicted = sum(CONTEXT - len(positions) for heads in keep.values() for positions in heads)
    assert analytic_bytes(full) - analytic_bytes(small) == evicted * per_position


def test_positions_after_eviction_come_from_the_logical_length():
    """A model left to derive positions itself (no position_ids) gets the same logits: the cache
    reports every position seen, not what it holds."""
    model = tiny_model("llama")
    ids = _ids(4)
    cache, _, logits = _run_compressed(model, ids, set())
    assert cache.get_seq_length() == len(ids)
    assert all(layer.kept_per_head() != [len(ids)] * 2 for layer in compressed_layers(cache).values())
    argument = cache_argument(type(model))
    cache2 = compressible_cache(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[:CONTEXT]]), **{argument: cache2}, use_cache=True)
        for index, positions in _keep(model, cache2, set()).items():
            compressed_layers(cache2)[index].compress(positions)
        derived = model(input_ids=torch.tensor([ids[CONTEXT:]]), **{argument: cache2}, use_cache=True).logits[
            0
        ]
    torch.testing.assert_close(derived, logits)


def test_each_query_head_reads_its_own_kv_head():
    bucket = Bucket(torch.tensor([0, 2]), torch.zeros(0), torch.zeros(0), torch.zeros(0))
    assert query_heads(bucket, 3).tolist() == [0, 1, 2, 6, 7, 8]


def test_recorded_peaks_on_a_compressed_cache_equal_eager_attention_on_the_kept_positions():
    model = tiny_model("llama")
    layout = describe_heads(model)
    ids = _ids(5)
    cache, keep, _ = _run_compressed(model, ids[: CONTEXT + 1], {1})
    instrument = Instrument(model, layout)
    from babelheads.runner.decode import Row, decode_prefilled
    from babelheads.runner.stops import StopRule

    try:
        decoded = decode_prefilled(instrument, cache, Row(ids[: CONTEXT + 2], STEPS), StopRule(), True)
    finally:
        instrument.detach()
    # The oracle: the same tokens, teacher-forced, with eager attention hiding the evicted positions.
    rows = _oracle_rows(model, ids[: CONTEXT + 2] + decoded.tokens[:-1], keep)
    for step in range(len(decoded.tokens)):
        query = CONTEXT + 1 + step
        for layer in range(layout.num_layers):
            peaks = decoded.records.positions[step, 0, layer, :, 0]
            expected = rows[layer][:, query].argmax(-1).numpy()
            assert (peaks == expected).all()


def _oracle_rows(model, sequence, keep):
    """Each layer's attention (heads, queries, keys) over the whole sequence in one pass, the evicted
    context positions hidden from the queries past the context."""
    EVICTED.clear()
    CAPTURED.clear()
    for index, positions in keep.items():
        hidden = torch.ones(len(positions), CONTEXT, dtype=torch.bool)
        for head, kept in enumerate(positions):
            hidden[head, kept] = False
        EVICTED[index] = hidden
    previous = model.config._attn_implementation
    model.set_attn_implementation("evicted_oracle")
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([sequence]))
        return dict(CAPTURED)
    finally:
        EVICTED.clear()
        model.set_attn_implementation(previous)


def test_a_compressed_layer_refuses_a_batch_and_a_second_compression():
    layer = HeadCompressedLayer()
    layer.update(torch.zeros(2, 1, 4, 8), torch.zeros(2, 1, 4, 8))
    from babelheads.errors import BabelheadsError

    with pytest.raises(BabelheadsError, match="one row"):
        layer.compress([torch.arange(2)])
    single = HeadCompressedLayer()
    single.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8))
    single.compress([torch.arange(4), torch.arange(2)])
    assert single.compressed and single.kept_per_head() == [4, 2]
    with pytest.raises(BabelheadsError, match="compressed once"):
        single.compress([torch.arange(2), torch.arange(2)])


# Policies: what each KV head keeps.
from babelheads.kvcache import policies as policy  # noqa: E402
from babelheads.kvcache.policies import PolicySettings  # noqa: E402

LAYERS = {1: 2, 3: 2}  # two full-attention layers with two KV heads each
SETTINGS = PolicySettings(sink=2, window=4)


def test_query_scores_map_to_kv_heads_by_max_or_mean():
    scores = np.array([[0.1, 0.9, 0.2, 0.4]])  # one layer, 4 query heads, 2 KV heads
    np.testing.assert_allclose(policy.kv_scores(scores, 2, "max"), [[0.9, 0.4]])
    np.testing.assert_allclose(policy.kv_scores(scores, 2, "mean"), [[0.5, 0.3]])


def test_head_split_window_and_random_heads_keep_equal_bytes():
    scores = np.zeros((4, 2))
    scores[1, 1], scores[3, 0] = 0.9, 0.5
    full = policy.full_heads(scores, sorted(LAYERS), 0.5)
    assert full == {(1, 1), (3, 0)}
    split = policy.head_split(LAYERS, 20, full, SETTINGS)
    assert split[1][1].tolist() == list(range(20)) and split[1][0].tolist() == [0, 1, 16, 17, 18, 19]
    total = policy.kept_total(split)
    assert total == 2 * 20 + 2 * 6
    window = policy.equal_window(LAYERS, 20, total, SETTINGS)
    assert policy.kept_total(window) == total  # 13 per head: sink 2 + the last 11
    assert window[1][0].tolist() == [0, 1, *range(9, 20)]
    for seed in range(3):
        drawn = policy.random_split(LAYERS, 20, full, SETTINGS, seed)
        assert policy.kept_total(drawn) == total
        # As many whole heads per layer as head-split keeps there.
        assert [sum(len(p) == 20 for p in drawn[layer]) for layer in LAYERS] == [1, 1]


def test_head_budget_follows_the_scores_with_a_floor_and_picks_low_norm_keys():
    scores = np.zeros((4, 2))
    scores[1] = [3.0, 1.0]
    scores[3] = [0.0, 0.0]
    keep = policy.head_budget(LAYERS, 40, scores, 40, PolicySettings(sink=2, floor=0.2))
    sizes = [len(p) for layer in LAYERS for p in keep[layer]]
    # mean 10; floor 2 each; the spare 32 split 3:1:0:0.
    assert sizes == [2 + 24, 2 + 8, 2, 2]
    assert sum(sizes) <= 40
    keys = {1: torch.zeros(2, 40, 4), 3: torch.zeros(2, 40, 4)}
    keys[1][0] += torch.arange(40).view(-1, 1) * 0.01  # norms grow with the position ...
    keys[1][0, 30:35] = 0.0  # ... but for five late positions
    chosen = policy.head_budget(
        LAYERS, 40, scores, 40, PolicySettings(sink=2, floor=0.2, token_rule="key-norm"), keys
    )[1][0]
    norms = keys[1][0].norm(dim=-1)
    rest = chosen[2:]
    assert chosen[:2].tolist() == [0, 1] and len(rest) == 24
    assert norms[rest].max() <= norms[2:][~torch.isin(torch.arange(2, 40), rest)].min()


def test_a_window_longer_than_the_context_keeps_everything():
    assert policy.sink_and_recent(10, 4, 8).tolist() == list(range(10))


def test_the_compress_command_runs_resumes_reports_and_refuses_bad_input(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import json

    from test_cli_and_runs import assert_one_line_error, run_cli

    from babelheads.runs import RunStore

    rng = np.random.default_rng(0)
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps({f"{layer}-{head}": [float(rng.random())] for layer in range(3) for head in range(4)})
    )
    out = tmp_path / "compress"
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
        "--needles",
        "builtin",
        "--sink",
        "4",
        "--window",
        "16",
        "--shares",
        "0.25,0.5",
        "--max-new-tokens",
        "4",
        "--replicates",
        "50",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    code, text, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "head-split - window" in text and "run written to" in text
    store = RunStore(out)
    samples = store.table("samples")
    assert (samples["bytes"] == samples["bytes_storage"]).all()
    per_share = samples[samples["policy"] != "full"].groupby(["sample_id", "share"])["bytes"]
    assert (per_share.max() - per_share.min() <= 2 * 2 * 16 * 4 * 3).all()  # equal bytes up to rounding
    before = store.derived("compress_scores")
    lost = sorted(store.finished())[0]
    (out / "tables" / "samples" / f"{lost}.parquet").unlink()
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    import pandas as pd

    pd.testing.assert_frame_equal(store.derived("compress_scores"), before)
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--from", str(out), "--out", str(out), "--quiet")
    assert code == 0, err  # the replayed settings find the run finished
    report = tmp_path / "report.html"
    assert run_cli(monkeypatch, capsys, "report", str(out), "--output", str(report))[0] == 0
    assert "accuracy against bytes" in report.read_text()
    from babelheads.analysis.claims import COLUMNS

    claims = store.derived("claims")
    assert list(claims.columns) == list(COLUMNS)
    assert set(claims["claim"]) == {
        "kv.headsplit_vs_window",
        "kv.headsplit_vs_random",
        "kv.headsplit_vs_full",
    }
    assert "kv.headsplit_vs_window" in report.read_text()  # the report opens with the claims
    # the negative control keeps random heads whole: another identity, and no claim holds on it
    control = tmp_path / "control"
    assert run_cli(monkeypatch, capsys, *args[:-1], str(control), "--control")[0] == 0
    assert RunStore(control).manifest()["spec"]["config"]["control"] is True
    assert "holds" not in set(RunStore(control).derived("claims")["verdict"])
    code, _, err = run_cli(
        monkeypatch, capsys, *args[:-2], "--policies", "full,lossless", "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, "Policies must include full")
    code, _, err = run_cli(monkeypatch, capsys, *args[:-2], "--head-sets", "fr", "--out", str(tmp_path / "y"))
    assert_one_line_error(code, err, "no head scores for fr")
    code, _, err = run_cli(
        monkeypatch, capsys, "compress", "--heads", str(tmp_path / "missing"), "--out", str(tmp_path / "z")
    )
    assert_one_line_error(code, err, "does not exist")


def test_random_heads_are_drawn_over_the_model_when_every_layer_has_one_kv_head():
    single = {5: 1, 11: 1, 17: 1}  # Gemma 3 270M's full-attention layers
    assert policy.random_scope(single) == "model" and policy.random_scope(LAYERS) == "layer"
    full = {(11, 0)}
    drawn = [
        {
            layer
            for layer, heads in policy.random_split(single, 20, full, SETTINGS, seed).items()
            if len(heads[0]) == 20
        }
        for seed in range(6)
    ]
    assert all(len(chosen) == 1 for chosen in drawn)
    assert len({frozenset(chosen) for chosen in drawn}) > 1  # not the head set redrawn every time


def test_head_budget_gives_what_a_capped_head_cannot_hold_to_the_others():
    scores = np.zeros((4, 2))
    scores[1] = [10.0, 1.0]
    scores[3] = [1.0, 0.0]
    total = 20 + 2 * 6 + 6  # more than any one head can hold with a context of 20
    keep = policy.head_budget(LAYERS, 20, scores, total, PolicySettings(sink=2, floor=0.2))
    sizes = [len(p) for layer in LAYERS for p in keep[layer]]
    assert sizes[0] == 20  # capped at the context
    assert total - len(sizes) <= sum(sizes) <= total  # the rest went to the others (rounding down)
    assert sizes[1] == sizes[2] > sizes[3]  # in proportion to their scores, above the floor


def test_head_scores_come_from_importance_runs_and_score_files(tmp_path):
    """LAHIS importance per language, and an official-format score file, as head scores."""
    import json
    from dataclasses import asdict

    import pandas as pd

    from babelheads.experiments.compress import CompressConfig, chosen_sets, head_scores
    from babelheads.heads import HeadLayout
    from babelheads.runs import RunStore

    layout = HeadLayout(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, layer_windows=[None, None])
    store = RunStore(tmp_path / "importance")
    store.create({"kind": "importance", "model": {"model": "tiny"}}, 0, {"layout": asdict(layout)})
    rows = [
        {
            "language": language,
            "layer": layer,
            "head": head,
            "paper": float(language == "de") * (layer * 4 + head),
        }
        for language in ("en", "de")
        for layer in range(2)
        for head in range(4)
    ]
    store.write_derived("importance", pd.DataFrame(rows))
    store.write_json("selection.json", {})  # what a finished importance run writes last
    scores = head_scores(str(store.root), layout)
    assert set(scores) == {"en", "de"} and scores["de"][1, 3] == 7 and not scores["en"].any()
    sets = chosen_sets(CompressConfig(heads="x", head_sets=("de", "union", "intersection")), scores)
    np.testing.assert_array_equal(sets["union"], scores["de"])
    np.testing.assert_array_equal(sets["intersection"], scores["en"])
    file = tmp_path / "heads.json"
    file.write_text(json.dumps({"1-2": [0.5, 0.7], "0-0": [0.1]}))
    from_file = head_scores(str(file), layout)["file"]
    assert from_file[1, 2] == pytest.approx(0.6) and from_file[0, 0] == pytest.approx(0.1)
