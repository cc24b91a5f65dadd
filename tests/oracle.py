"""The naive reference detector: eager attention with output_attentions, Python loops over heads.

It is deliberately simple and independent of the instrument. Without a cache it recomputes the whole
sequence at every step, so the attention row index is the absolute position and no slot mapping is
involved. With a cache it is what the official retrieval-head code does (and what the benchmark
compares against).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def naive_peaks(model, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = False):
    """Greedy decode; returns (tokens, peaks, rows) with peaks[step][layer][head] = argmax position and
    rows[step][layer] = the attention row, Tensor of shape (heads, positions)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        tokens, peaks, rows = [], [], []
        sequence = input_ids
        cache = None
        step_input = input_ids
        for _ in range(max_new_tokens):
            if use_cache:
                out = model(
                    input_ids=step_input, past_key_values=cache, use_cache=True, output_attentions=True
                )
                cache = out.past_key_values
            else:
                out = model(input_ids=sequence, use_cache=False, output_attentions=True)
            token = int(out.logits[0, -1].argmax())
            step_rows, step_peaks = [], []
            for layer_attention in out.attentions:
                row = layer_attention[0, :, -1, :]
                if use_cache:
                    # Sliding-window caches hold only the last keys: pad on the left to absolute positions.
                    full = torch.zeros(row.shape[0], sequence.shape[1])
                    full[:, sequence.shape[1] - row.shape[1] :] = row
                    row = full
                step_rows.append(row)
                step_peaks.append([int(row[head].argmax()) for head in range(row.shape[0])])
            tokens.append(token)
            peaks.append(step_peaks)
            rows.append(step_rows)
            step_input = torch.tensor([[token]])
            sequence = torch.cat([sequence, step_input], dim=1)
        return tokens, peaks, rows
    finally:
        model.set_attn_implementation(previous)
