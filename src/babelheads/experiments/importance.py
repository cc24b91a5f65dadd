"""LAHIS: each head's importance for a language, from one forward and one backward pass per text
through a gate of ones on every query head's output; then the language heads it selects."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from babelheads.analysis.language_heads import (
    FORMULAS,
    default_min_languages,
    importance_scores,
    select_language_heads,
)
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.heads import HeadLayout
from babelheads.models import LoadedModel, resolved_precision
from babelheads.probe import HeadGates, Instrument
from babelheads.runner.losses import Scored, frozen_weights, row_losses, rows_per_pass
from babelheads.runs import RunStore
from babelheads.tasks.lm_texts import TextSettings, TextWindow, TextWindows

SELECTION_FILE = "selection.json"
DRIFT_LR = 1e-2
DRIFT_WEIGHT_DECAY = 0.01


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
    step (lr 1e-2) moves the gates after every text, so later texts are scored on a changed model (a
    bug of that code, off by default)."""

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
        return config


def check_differentiable(loaded: LoadedModel) -> None:
    parameter = next(loaded.model.parameters())
    if not parameter.dtype.is_floating_point:
        raise BabelheadsError(
            f"The model's weights are {parameter.dtype}, which cannot carry gradients. "
            "Load it in float32 or bfloat16 (--dtype float32)."
        )


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


def importance(config: ImportanceConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) importance scoring into ``out``; one part per text, every language."""
    task = TextWindows(config.texts)
    store = RunStore(out)
    spec = {
        "kind": "importance",
        "config": config.identity(),
        "data": task.identity(),
        "precision": resolved_precision(config.dtype, execution.device),
    }
    store.check_compatible(spec, ignore=("model",))
    expected = _expected_ids(store)
    if expected is None or not expected <= store.finished():
        loaded = execution.load(config.model, config.dtype)
        check_differentiable(loaded)
        spec["model"] = loaded.identity
        store.check_compatible(spec)
        windows = task.build(loaded)
        store.create(
            spec,
            config.texts.seed,
            {"layout": asdict(loaded.layout), "windows": [w.window_id for w in windows]},
        )
        _score(store, loaded, windows, config, execution)
    if _expected_ids(store) <= store.finished():
        finalize(store, config)
    return store


def _expected_ids(store: RunStore) -> set[str] | None:
    return set(store.manifest()["windows"]) if store.exists() else None


def _score(
    store: RunStore,
    loaded: LoadedModel,
    windows: list[TextWindow],
    config: ImportanceConfig,
    execution: Execution,
) -> None:
    finished = store.finished()
    todo = [window for window in windows if window.window_id not in finished]
    instrument = Instrument(loaded.model, loaded.layout)
    bar = tqdm(
        total=len(todo), desc="importance", unit="text", disable=not execution.progress, dynamic_ncols=True
    )
    try:
        if config.drift:
            for code in config.texts.languages:
                _drifting(store, loaded, instrument, [w for w in todo if w.language == code], bar)
        else:
            size = rows_per_pass(execution.batch_size, loaded.device)
            for start in range(0, len(todo), size):
                batch = todo[start : start + size]
                gradient, losses = gate_gradients(loaded, instrument, batch)
                ones = torch.ones_like(gradient[0])
                for index, window in enumerate(batch):
                    store.append(
                        window.window_id, _tables(window, gradient[index], ones, float(losses[index]))
                    )
                bar.update(len(batch))
    finally:
        bar.close()
        instrument.detach()


def _drifting(
    store: RunStore, loaded: LoadedModel, instrument: Instrument, windows: list[TextWindow], bar
) -> None:
    """The released code's scoring: one text at a time, an AdamW step on the gates after each. The
    optimiser's state is not stored, so a language is written only once all its texts are done."""
    if not windows:
        return
    layout = loaded.layout
    gate = torch.nn.Parameter(torch.ones(layout.num_layers, layout.num_heads))
    optimiser = torch.optim.AdamW([gate], lr=DRIFT_LR, weight_decay=DRIFT_WEIGHT_DECAY)
    parts = []
    for window in sorted(windows, key=lambda w: w.window_id):
        current = gate.detach().clone()
        gradient, losses = gate_gradients(loaded, instrument, [window], current)
        parts.append((window.window_id, _tables(window, gradient[0], current.double(), float(losses[0]))))
        gate.grad = gradient[0].float()
        optimiser.step()
        optimiser.zero_grad()
        bar.update()
    for window_id, tables in parts:
        store.append(window_id, tables)


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
    store.write_derived("importance", table)
    store.write_csv("importance", table)
    selection = config.selection
    heads = select_language_heads(
        table, selection.formula, selection.percentile, selection.min_languages, selection.share
    )
    store.write_derived("language_heads", heads)
    store.write_csv("language_heads", heads)
    store.write_json(SELECTION_FILE, {**asdict(selection), **heads.attrs})


def recorded_selection(store: RunStore) -> dict:
    """The selection the language_heads table was last written with (n and min_languages resolved)."""
    return json.loads((store.root / SELECTION_FILE).read_text())


@dataclass(frozen=True)
class ImportanceRun:
    """A finished importance run as the experiments on its heads read it."""

    store: RunStore
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> ImportanceRun:
        store = RunStore(Path(path))
        manifest = store.manifest()
        if manifest["spec"].get("kind") != "importance":
            raise BabelheadsError(f"{path} is not an importance run; run babelheads importance first.")
        if not (store.root / SELECTION_FILE).exists():
            raise BabelheadsError(f"{path} has not finished; run its babelheads importance command again.")
        return cls(store, manifest)

    @property
    def layout(self) -> HeadLayout:
        layout = self.manifest["layout"]
        return HeadLayout(**{**layout, "layer_windows": tuple(layout["layer_windows"])})

    def load_model(self, execution: Execution) -> LoadedModel:
        """The model the heads were scored on, refused if the files changed since."""
        config = self.manifest["spec"]["config"]
        loaded = execution.load(config["model"], config["dtype"])
        if loaded.identity != self.manifest["spec"]["model"]:
            raise BabelheadsError(
                f"The model loaded now differs from the importance run's ({loaded.identity})."
            )
        return loaded
