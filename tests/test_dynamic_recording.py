"""What the dynamic-heads analyses read: region masses and final hidden states, against eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import naive_peaks
from tiny_models import ARCHITECTURES, tiny_model

from babelheads.models import describe_heads
from babelheads.probe import Instrument, ProbeSettings
from babelheads.runner.decode import Row, decode_rows
from babelheads.runner.prefix import SharedPrefill
from babelheads.runner.stops import StopRule

STEPS = 5


def _labels(length: int, seed: int) -> list[int]:
    generator = np.random.default_rng(seed)
    return generator.integers(-1, 2, size=length).tolist()


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_region_masses_equal_eager_rows_summed_over_the_regions_at_every_step(kind):
    model = tiny_model(kind)
    settings = ProbeSettings(mass_sink=3, mass_window=4)
    instrument = Instrument(model, describe_heads(model), settings)
    prompts = [
        torch.randint(3, 500, (1, length), generator=torch.Generator().manual_seed(length))
        for length in (30, 22)
    ]
    rows = [Row(p[0].tolist(), STEPS, None, _labels(p.shape[1], p.shape[1])) for p in prompts]
    decoded = decode_rows(
        instrument, SharedPrefill(model, 8, share=False), rows, StopRule(), True, regions=2, hidden=True
    )
    instrument.detach()
    for prompt, row, result in zip(prompts, rows, decoded, strict=True):
        tokens, _, eager_rows = naive_peaks(model, prompt, STEPS)
        assert result.tokens == tokens
        labels = np.asarray(row.regions)
        for step in range(STEPS):
            query = prompt.shape[1] - 1 + step
            counted = np.zeros(query + 1, bool)
            counted[settings.mass_sink : query - settings.mass_window + 1] = True
            for layer, layer_rows in enumerate(eager_rows[step]):
                attention = layer_rows.numpy()
                for region in (0, 1):
                    where = np.zeros(attention.shape[1], bool)
                    where[: len(labels)] = labels == region
                    expected = attention[:, where & counted[: attention.shape[1]]].sum(axis=1)
                    ours = result.records.mass[step, 0, layer, :, region]
                    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_final_hidden_states_are_what_the_lm_head_turns_into_each_emitted_token(kind):
    model = tiny_model(kind)
    prompt = torch.randint(3, 500, (1, 20), generator=torch.Generator().manual_seed(3))
    instrument = Instrument(model, describe_heads(model))
    rows = [Row(prompt[0].tolist(), STEPS)]
    result = decode_rows(
        instrument, SharedPrefill(model, 8, share=False), rows, StopRule(), False, hidden=True
    )[0]
    instrument.detach()
    assert result.hidden.shape == (STEPS, model.config.hidden_size)
    sequence = torch.cat([prompt, torch.tensor([result.tokens[:-1]])], dim=1)
    with torch.no_grad():
        full = model(input_ids=sequence, output_hidden_states=True)
    # The state at step t is the last layer's output at the query that emitted token t.
    head = model.get_output_embeddings()
    with torch.no_grad():
        logits = head(torch.from_numpy(result.hidden))
    assert logits.argmax(-1).tolist() == result.tokens
    expected = full.hidden_states[-1][0, prompt.shape[1] - 1 :]
    np.testing.assert_allclose(result.hidden, expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_labels_past_the_prompt_give_each_generated_positions_eager_weight_and_entropy_is_exact(kind):
    """What the retrieval loop reads: one region per position, the generated ones included, and each
    step's next-token entropy."""
    model = tiny_model(kind)
    instrument = Instrument(model, describe_heads(model), ProbeSettings(mass_sink=0, mass_window=0))
    prompt = torch.randint(3, 500, (1, 18), generator=torch.Generator().manual_seed(5))
    length = prompt.shape[1]
    labels = [-1] * length + list(range(STEPS))
    labels[4], labels[9] = STEPS, STEPS + 1  # two prompt positions, after the generated ones
    rows = [Row(prompt[0].tolist(), STEPS, None, labels)]
    result = decode_rows(
        instrument,
        SharedPrefill(model, 8, share=False),
        rows,
        StopRule(),
        True,
        regions=STEPS + 2,
        entropy=True,
    )[0]
    instrument.detach()
    tokens, _, eager_rows = naive_peaks(model, prompt, STEPS)
    assert result.tokens == tokens
    for step in range(STEPS):
        for layer, layer_rows in enumerate(eager_rows[step]):
            attention = layer_rows.numpy()
            mass = result.records.mass[step, 0, layer]
            np.testing.assert_allclose(mass[:, STEPS], attention[:, 4], atol=1e-5)
            np.testing.assert_allclose(mass[:, STEPS + 1], attention[:, 9], atol=1e-5)
            for generated in range(STEPS):
                position = length + generated
                expected = attention[:, position] if position < attention.shape[1] else 0.0
                np.testing.assert_allclose(mass[:, generated], expected, atol=1e-5)
    sequence = torch.cat([prompt, torch.tensor([tokens[:-1]])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=sequence).logits[0, length - 1 :].double()
    expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).numpy()
    np.testing.assert_allclose(result.entropy, expected, rtol=1e-4)
