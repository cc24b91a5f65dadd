"""LAHIS: each head's importance for a language, from one forward and one backward pass per text
through a gate of ones on every query head's output; then the language heads it selects."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from babelheads.analysis.language_heads import (
    FORMULAS,
    default_min_languages,
    importance_scores,
    select_language_heads,
)
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument
from babelheads.runner.losses import Scored, check_differentiable, frozen_weights, row_losses, rows_per_pass
from babelheads.runner.parts import Part, execute_parts, in_batches_of
from babelheads.runs import RunStore
from babelheads.tasks.lm_texts import TextSettings, TextWindow, TextWindows

SELECTION_FILE = "selection.json"
DRIFT_LR = 1e-2
DRIFT_WEIGHT_DECAY = 0.01
DRIFT_DTYPE = torch.bfloat16
"""The released code's gate: ``nn.Parameter(torch.ones(L, H, dtype=torch.bfloat16))``, so its gradient
and AdamW's moments are bf16 too. Its AdamW default decay multiplies the gate by 1 - lr x 0.01 =
0.9999, which rounds back to the same bf16 value (a relative step of 1e-4 is under half of bf16's
spacing, 2^-9 relative): the decay is a no-op there. In float32 it would shrink every gate, the ones
with no gradient too."""


@dataclass(frozen=True)
class Selection:
    """How language heads are read from the scores; changing it rewrites the tables, never re-runs.
    formula : 'paper' or 'code' (both are always written). percentile : candidates lie strictly above
    it. min_languages : candidates of this many languages are general (None: 80 %, LAHIS's 4 of 5).
    share : n = int(L x H x share) specific heads per language."""

    formula: str = "paper"
    percentile: float = 96.0
    min_languages: int | None = None
    share: float = 0.02

    def __post_init__(self) -> None:
        if self.formula not in FORMULAS:
            raise BabelheadsError(f"Unknown formula {self.formula!r}. Use one of: {', '.join(FORMULAS)}.")
        # Written so that NaN fails too: every comparison with NaN is False.
        if not (math.isfinite(self.percentile) and 0 < self.percentile < 100):
            raise BabelheadsError(
                f"--percentile must lie in (0, 100) (candidates lie strictly above it; LAHIS: 96). "
                f"Got {self.percentile}."
            )
        if self.min_languages is not None and self.min_languages < 1:
            raise BabelheadsError(
                f"--min-languages must be at least 1 (or left out for 80 % of the languages). "
                f"Got {self.min_languages}."
            )
        if not (math.isfinite(self.share) and 0 < self.share < 1):
            raise BabelheadsError(f"--share must lie in (0, 1). Got {self.share}.")

    def check_languages(self, languages: int) -> None:
        """min_languages (given, or the 80 % default) must be reachable with this many languages."""
        needed = default_min_languages(languages) if self.min_languages is None else self.min_languages
        if not 1 <= needed <= languages:
            given = "" if self.min_languages is not None else " (the default: 80 % of them, at least 2)"
            raise BabelheadsError(
                f"--min-languages must be between 1 and the number of languages ({languages}). Got "
                f"{needed}{given}. Give --min-languages 1 to {languages}, or more --languages."
            )


@dataclass(frozen=True)
class ImportanceConfig:
    """texts : windows of the corpus's scoring half. drift : reproduce the released code, whose AdamW
    step (lr 1e-2, weight decay 0.01) moves the gates after every text, so later texts are scored on a
    changed model (a bug of that code, off by default). The gate, its gradient and the optimiser's
    state are bf16 as there (so the decay is the same no-op); the gradient is computed at the run's
    dtype and rounded to bf16 (the released code's comes out of a bf16 backward pass), and the scores
    are accumulated in float64 (the released code's bf16 sums lose small increments)."""

    model: str = "gemma-3-270m"
    texts: TextSettings = field(default_factory=TextSettings)
    dtype: str = "auto"
    drift: bool = False
    selection: Selection = field(default_factory=Selection)

    def __post_init__(self) -> None:
        if self.texts.half != "scoring":
            raise BabelheadsError("Importance is computed on the scoring half of the texts.")
        # Refused now, not after every gradient has been computed (the selection runs last).
        self.selection.check_languages(len(self.texts.languages))

    def identity(self) -> dict:
        config = asdict(self)
        config.pop("selection")
        if self.drift:  # drift runs made before the gates were bf16 moved them otherwise: other runs
            config["drift_gates"] = str(DRIFT_DTYPE).removeprefix("torch.")
        return config


def gate_gradients(
    loaded: LoadedModel,
    instrument: Instrument,
    windows: list[TextWindow],
    gate_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL_x/dm for each window x, shape (batch, layers, heads), with L_x its mean next-token loss; and
    the losses. Each row has its own gate tensor, so one backward pass gives every row's gradient."""
    layout = loaded.layout
    base = torch.ones(layout.num_layers, layout.num_heads) if gate_values is None else gate_values.detach()
    values = base.float().expand(len(windows), -1, -1).clone().requires_grad_(True)
    gates = HeadGates(values, frozenset({"prefill"}))
    with torch.enable_grad(), frozen_weights(loaded.model):
        nll, count = row_losses(loaded, instrument, [Scored(w.input_ids) for w in windows], gates)
        losses = nll / count
        losses.sum().backward()
    gradient = values.grad.detach().double()
    if not torch.isfinite(gradient).all():
        raise BabelheadsError(
            "Gate gradients overflowed in this dtype. Run with --dtype float32 (or bfloat16 on a GPU)."
        )
    return gradient, losses.detach().double().cpu()


class Importance(Experiment):
    """Gate gradients of every text window, one part per window, every language."""

    kind = "importance"

    def __init__(self, config: ImportanceConfig):
        self.config = config
        self.task = TextWindows(config.texts)

    def check_execution(self, execution: Execution) -> None:
        if self.config.drift and execution.shard.count > 1:
            raise BabelheadsError(
                "--drift scores a language's texts in sequence (each on the gates the last one moved), "
                "so it cannot be split into shards. Leave out --shard or --drift."
            )

    @property
    def seed(self) -> int:
        return self.config.texts.seed

    def identity(self, execution: Execution) -> dict:
        return run_identity(self.config.identity(), self.task.identity(), self.config.dtype, execution)

    def model(self) -> ModelChoice:
        return ModelChoice(self.config.model, self.config.dtype)

    def prepare(self, loaded: LoadedModel) -> Prepared:
        check_differentiable(loaded)
        windows = self.task.build(loaded)
        return Prepared([w.window_id for w in windows], {"layout": asdict(loaded.layout)}, windows)

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        parts = [Part(window.window_id, window) for window in prepared.state]
        with Instrument(loaded.model, loaded.layout) as instrument:
            if self.config.drift:
                batches, compute = _by_language, _drifting(loaded, instrument)
            else:
                batches = in_batches_of(rows_per_pass(execution.batch_size, loaded.device))
                compute = _gradients(loaded, instrument)
            execute_parts(
                store,
                parts,
                compute,
                shard=execution.shard,
                batches=batches,
                progress=execution.progress,
                description="importance",
                unit="text",
            )

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config)


def importance(config: ImportanceConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) importance scoring into ``out``; one part per text, every language."""
    return run_experiment(Importance(config), out, execution)


def _gradients(loaded: LoadedModel, instrument: Instrument):
    def compute(batch: list[Part]) -> Iterator[tuple[Part, dict[str, pd.DataFrame]]]:
        windows = [part.work for part in batch]
        gradient, losses = gate_gradients(loaded, instrument, windows)
        ones = torch.ones_like(gradient[0])
        for index, (part, window) in enumerate(zip(batch, windows, strict=True)):
            yield part, _tables(window, gradient[index], ones, float(losses[index]))

    return compute


def _by_language(parts: list[Part]) -> Iterator[list[Part]]:
    languages: dict[str, list[Part]] = {}
    for part in parts:
        languages.setdefault(part.work.language, []).append(part)
    for group in languages.values():
        yield sorted(group, key=lambda part: part.part_id)


def drifting_gates(
    shape: tuple[int, int], dtype: torch.dtype = DRIFT_DTYPE
) -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    """The released code's gate of ones and its optimiser (AdamW, lr 1e-2, default decay 0.01), in
    ``dtype`` (bf16 as released; float32 only to show what the decay would do there)."""
    gate = torch.nn.Parameter(torch.ones(shape, dtype=dtype))
    return gate, torch.optim.AdamW([gate], lr=DRIFT_LR, weight_decay=DRIFT_WEIGHT_DECAY)


def drift_step(gate: torch.nn.Parameter, optimiser: torch.optim.AdamW, gradient: torch.Tensor) -> None:
    """One AdamW step on ``gate`` with ``gradient`` rounded to the gate's dtype, as its .grad would be."""
    gate.grad = gradient.to(gate.dtype)
    optimiser.step()
    optimiser.zero_grad()


def _drifting(loaded: LoadedModel, instrument: Instrument):
    """The released code's scoring: one text at a time, an AdamW step on the bf16 gates after each. The
    optimiser's state is not stored, so a language is written only once all its texts are done."""

    def compute(batch: list[Part]) -> Iterator[tuple[Part, dict[str, pd.DataFrame]]]:
        layout = loaded.layout
        gate, optimiser = drifting_gates((layout.num_layers, layout.num_heads))
        done = []
        for part in batch:
            current = gate.detach().clone()  # bf16 values, exact in the float gates of the pass
            gradient, losses = gate_gradients(loaded, instrument, [part.work], current)
            done.append((part, _tables(part.work, gradient[0], current.double(), float(losses[0]))))
            drift_step(gate, optimiser, gradient[0])
        yield from done

    return compute


def _tables(
    window: TextWindow, gradient: torch.Tensor, gate: torch.Tensor, loss: float
) -> dict[str, pd.DataFrame]:
    layers, heads = gradient.shape
    frame = pd.DataFrame(
        {
            "sample_id": window.window_id,
            "language": window.language,
            "layer": [layer for layer in range(layers) for _ in range(heads)],
            "head": [head for _ in range(layers) for head in range(heads)],
            "gradient": gradient.reshape(-1).cpu().numpy(),
            "gate": gate.reshape(-1).cpu().numpy(),
        }
    )
    sample = {
        "sample_id": window.window_id,
        "language": window.language,
        "document": window.document,
        "tokens": len(window.input_ids),
        "loss": loss,
        "perplexity": math.exp(loss),
        "status": "ok",
        "success": True,
    }
    return {"gradients": frame, "samples": pd.DataFrame([sample])}


def finalize(store: RunStore, config: ImportanceConfig) -> None:
    table = importance_scores(store.table("gradients"))
    store.write_table("importance", table)
    selection = config.selection
    heads = select_language_heads(
        table, selection.formula, selection.percentile, selection.min_languages, selection.share
    )
    store.write_table("language_heads", heads)
    store.write_json(SELECTION_FILE, {**asdict(selection), **heads.attrs})
