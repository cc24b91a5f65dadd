"""The instrument against eager attention, gates against removing heads another way."""

from __future__ import annotations

import pytest
import torch
from oracle import naive_peaks
from tiny_models import ARCHITECTURES, reference_attention, tiny_model

from babelheads.heads import HeadAddress
from babelheads.models import describe_heads
from babelheads.probe import HeadGates, Instrument, ProbeSettings
from babelheads.runner import greedy_decode

STEPS = 6


def _prompt(length: int = 40, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 500, (1, length), generator=generator)


def _recorded(model, ids, settings=None):
    instrument = Instrument(model, describe_heads(model), settings)
    decoded = greedy_decode(instrument, ids, STEPS, prefill_chunk=16)
    instrument.detach()
    return decoded


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_recorded_peaks_equal_eager_argmax_at_every_step_layer_and_head(kind):
    model = tiny_model(kind)
    ids = _prompt()
    decoded = _recorded(model, ids)
    tokens, peaks, rows = naive_peaks(model, ids, STEPS)
    assert decoded.tokens == tokens
    positions, weights = decoded.records.positions, decoded.records.weights
    checked = 0
    for step in range(STEPS):
        for layer, layer_peaks in enumerate(peaks[step]):
            for head, eager_peak in enumerate(layer_peaks):
                row = rows[step][layer][head]
                ours = int(positions[step, 0, layer, head, 0])
                # Ties aside: when two positions are within float noise, either is a correct argmax.
                assert ours == eager_peak or abs(float(row[ours]) - float(row[eager_peak])) < 1e-5
                assert weights[step, 0, layer, head, 0] == pytest.approx(float(row[eager_peak]), abs=1e-4)
                checked += 1
    assert checked == STEPS * len(peaks[0]) * len(peaks[0][0])


@pytest.mark.parametrize("kind", ["gemma3", "mistral"])
def test_sliding_window_peaks_stay_inside_the_window(kind):
    model = tiny_model(kind)
    layout = describe_heads(model)
    ids = _prompt(60)
    positions = _recorded(model, ids).records.positions
    for layer, window in enumerate(layout.layer_windows):
        if window is None:
            continue
        for step in range(STEPS):
            query_position = ids.shape[1] - 1 + step
            layer_positions = positions[step, 0, layer]
            assert (layer_positions > query_position - window).all(), (layer, step)
            assert (layer_positions <= query_position).all()


def test_the_eager_oracle_with_a_cache_agrees_with_the_oracle_without():
    model = tiny_model("gemma3")
    ids = _prompt(50)
    _, peaks_fresh, _ = naive_peaks(model, ids, 4, use_cache=False)
    _, peaks_cached, _ = naive_peaks(model, ids, 4, use_cache=True)
    assert peaks_fresh == peaks_cached


def test_sink_tokens_are_never_peaks_but_keep_their_weight():
    model = tiny_model("llama")
    ids = _prompt()
    plain = _recorded(model, ids).records
    no_sinks = _recorded(model, ids, ProbeSettings(top_k=4, sink_tokens=3)).records
    assert (no_sinks.positions >= 3).all()
    assert (plain.positions < 3).any(), "the test prompt must have some peaks on the first positions"
    kept = plain.positions[..., 0] >= 3
    assert (plain.positions[..., 0][kept] == no_sinks.positions[..., 0][kept]).all()


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_greedy_output_is_identical_with_instrument_on_and_off(kind):
    ids = _prompt()
    instrumented = _recorded(tiny_model(kind), ids).tokens
    plain = tiny_model(kind, attn_implementation=reference_attention(kind))
    # No stop token on either side (min_new_tokens would instead forbid EOS, which greedy may pick).
    plain.generation_config.eos_token_id = None
    reference = plain.generate(ids, max_new_tokens=STEPS, do_sample=False)
    assert instrumented == reference[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_logits_without_gates_equal_the_reference_attention(kind):
    """sdpa's logits exactly; for Gemma 2 (soft-capping) the model's own eager attention's."""
    ids = _prompt()
    ours = tiny_model(kind)
    instrument = Instrument(ours, describe_heads(ours))
    with torch.no_grad():
        logits = ours(ids).logits
        reference = tiny_model(kind, attn_implementation=reference_attention(kind))(ids).logits
    if kind in ("gemma2",):
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(logits, reference)
    instrument.detach()


def _without_heads_in_o_proj(model, layout, heads):
    with torch.no_grad():
        for address in heads:
            attention = model.model.layers[address.layer].self_attn
            columns = slice(address.head * layout.head_dim, (address.head + 1) * layout.head_dim)
            attention.o_proj.weight[:, columns] = 0.0
    return model


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_hard_mask_equals_zeroing_the_heads_output_projection(kind):
    ids = _prompt()
    model = tiny_model(kind)
    layout = describe_heads(model)
    heads = [HeadAddress(0, 1), HeadAddress(1, 3), HeadAddress(2, 0)]
    instrument = Instrument(model, layout)
    with torch.no_grad():
        unmasked = model(ids).logits
        with instrument.gated(HeadGates.mask(layout, heads)):
            masked = model(ids).logits
        with instrument.gated(HeadGates.ones(layout)):
            ones = model(ids).logits
    reference_model = _without_heads_in_o_proj(
        tiny_model(kind, attn_implementation=reference_attention(kind)), layout, heads
    )
    with torch.no_grad():
        reference = reference_model(ids).logits
    assert torch.equal(ones, unmasked)
    assert not torch.allclose(masked, unmasked, atol=1e-4), "the mask must take effect"
    torch.testing.assert_close(masked, reference, atol=1e-5, rtol=1e-5)


def test_decode_only_gates_leave_prefill_untouched_and_mask_the_first_answer_token():
    """The official protocol: the prefill covers the prompt but its last token, which is decode step 0,
    so decode-only masking covers the query that emits the first answer token."""
    model = tiny_model("llama")
    layout = describe_heads(model)
    instrument = Instrument(model, layout)
    every_head = layout.addresses()
    ids = _prompt()
    with instrument.gated(HeadGates.mask(layout, every_head, phases=["decode"])):
        with torch.no_grad():
            instrument.set_phase("prefill")
            prefill_logits = model(ids).logits
        decoded = greedy_decode(instrument, ids, STEPS, record=False)
    with torch.no_grad():
        reference = model(ids).logits
    assert torch.equal(prefill_logits, reference)
    plain = greedy_decode(instrument, ids, STEPS, record=False)
    assert decoded.tokens[0] != plain.tokens[0], "the first answer token must be masked too"
    first = greedy_decode(instrument, ids, 1, record=True)
    assert first.records.num_steps == 1 and first.tokens == plain.tokens[:1]


def test_soft_gate_gradients_match_finite_differences():
    model = tiny_model("qwen2").double()
    layout = describe_heads(model)
    instrument = Instrument(model, layout)
    ids = _prompt(20)
    values = torch.rand(layout.num_layers, layout.num_heads, dtype=torch.float64) + 0.5
    gates = HeadGates(values.clone().requires_grad_(True))

    def loss(gate_values):
        with instrument.gated(HeadGates(gate_values)):
            return model(ids).logits[0, -1].log_softmax(-1)[7]

    loss(gates.values).backward()
    # RMSNorm runs in float32 even in a float64 model, so the step cannot be tiny.
    epsilon = 1e-3
    for layer, head in [(0, 0), (1, 2), (2, 3)]:
        up, down = values.clone(), values.clone()
        up[layer, head] += epsilon
        down[layer, head] -= epsilon
        with torch.no_grad():
            numeric = (loss(up) - loss(down)) / (2 * epsilon)
        assert float(gates.values.grad[layer, head]) == pytest.approx(float(numeric), rel=5e-3, abs=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "phi3"])
def test_uniform_masking_equals_zeroing_the_heads_query_while_decoding(kind):
    """The official code's masking: a zero query attends uniformly; the gate must give the same step."""
    import copy

    from transformers import DynamicCache

    ids = _prompt(30)
    model = tiny_model(kind)
    layout = describe_heads(model)
    heads = [HeadAddress(0, 1), HeadAddress(layout.num_layers - 1, 2)]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        first = model(ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    instrument = Instrument(model, layout)
    instrument.set_phase("decode")
    with torch.no_grad(), instrument.gated(HeadGates.mask(layout, heads, phases=["decode"], mode="uniform")):
        gated = model(first, past_key_values=copy.deepcopy(cache), use_cache=True).logits
        plain_cache = copy.deepcopy(cache)
    with torch.no_grad():
        plain = model(first, past_key_values=plain_cache, use_cache=True).logits
    instrument.detach()
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for address in heads:
            attention = zeroed.model.layers[address.layer].self_attn
            rows = slice(address.head * layout.head_dim, (address.head + 1) * layout.head_dim)
            if hasattr(attention, "q_proj"):
                attention.q_proj.weight[rows] = 0.0
                if attention.q_proj.bias is not None:
                    attention.q_proj.bias[rows] = 0.0
            else:  # Phi-3 packs q, k and v in one projection, queries first
                attention.qkv_proj.weight[rows] = 0.0
        reference = zeroed(first, past_key_values=copy.deepcopy(cache), use_cache=True).logits
    assert not torch.allclose(gated, plain, atol=1e-4), "the mask must take effect"
    torch.testing.assert_close(gated, reference, atol=1e-5, rtol=1e-5)


def test_uniform_masking_refuses_the_prefill():
    layout = describe_heads(tiny_model("llama"))
    with pytest.raises(ValueError, match="decoding only"):
        HeadGates.mask(layout, [HeadAddress(0, 0)], mode="uniform")
