"""Teacher-forced losses per batch row, under per-row head gates: perplexity, head importance and
soft-mask training all read them. The decode loop is elsewhere; this is one forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from babelheads.errors import BabelheadsError
from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument
from babelheads.tasks.base import Scored

DEFAULT_ROWS = {"cpu": 1, "cuda": 8}
"""Rows per teacher-forced pass when the user sets none. On 2 CPU cores a batch of 4 took 1.22x the time
and 1.9x the memory of one text at a time (benchmarks/importance_speed.py); a GPU gains from batching."""


def rows_per_pass(batch_size: int | None, device: torch.device) -> int:
    return batch_size or DEFAULT_ROWS.get(device.type, 1)


def row_losses(
    loaded: LoadedModel, instrument: Instrument, rows: list[Scored], gates: HeadGates | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each row's scored tokens, and their count: two tensors of
    shape (batch,). Rows are left-padded with explicit positions, so every row ends at the same place
    and only the logits of scored tokens are computed (a 256K vocabulary makes the others the largest
    cost). Padding is never attended to nor scored. Gradients flow to trainable gates when grad mode is
    on (the caller keeps the model's own parameters frozen)."""
    device = loaded.device
    length = max(len(row.input_ids) for row in rows)
    keep = max(len(row.input_ids) - row.scored_from + 1 for row in rows)
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    scored = torch.zeros((len(rows), length), dtype=torch.bool)
    for index, row in enumerate(rows):
        offset = length - len(row.input_ids)
        ids[index, offset:] = torch.tensor(row.input_ids)
        attention[index, offset:] = 1
        scored[index, offset + row.scored_from :] = True
    positions = (attention.cumsum(dim=1) - 1).clamp_min(0)
    ids, attention, positions = ids.to(device), attention.to(device), positions.to(device)
    instrument.set_phase("prefill")
    with instrument.gated(gates):
        logits = loaded.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=keep,
        ).logits
    # Logit t predicts token t + 1; half-precision logits are upcast, float64 ones kept.
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = ids[:, length - keep + 1 :]
    mask = scored[:, length - keep + 1 :].to(logits.device)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1).to(logits.device)).squeeze(-1)
    nll = torch.where(mask, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(dim=1), mask.sum(dim=1)


@contextmanager
def frozen_weights(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, no model parameter requires a gradient: backward passes fill only the gates'
    gradients, so memory holds activations and gates, never a gradient per weight."""
    saved = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in saved:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


def check_differentiable(loaded: LoadedModel) -> None:
    parameter = next(loaded.model.parameters())
    if not parameter.dtype.is_floating_point:
        raise BabelheadsError(
            f"The model's weights are {parameter.dtype}, which cannot carry gradients. "
            "Load it in float32 or bfloat16 (--dtype float32)."
        )
