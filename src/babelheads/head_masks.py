"""Head-mask files: a value per query head that scales its output, as learned by ``babelheads adapt``
or written by hand; every model-running command applies one with ``--head-mask FILE``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from babelheads.errors import BabelheadsError
from babelheads.heads import HeadLayout

FORMAT = "babelheads-head-mask"
MASK_METHODS = {"gate": "scale", "uniform": "uniform"}
"""How a masked head is silenced (--method): 'gate' zeroes its output before o_proj; 'uniform' makes
it attend uniformly (the official code's masking). Values are the instrument's gate modes."""


def write_head_mask(path: Path, values: torch.Tensor, about: dict) -> Path:
    """values : (layers, heads). ``about`` records where the mask came from (model, language, heads)."""
    data = {
        "format": FORMAT,
        "layers": int(values.shape[0]),
        "heads": int(values.shape[1]),
        "values": values.detach().double().cpu().tolist(),
        **about,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    temporary.replace(path)
    return path


def read_head_mask(path: Path, layout: HeadLayout | None = None) -> torch.Tensor:
    """A mask file as a (layers, heads) float64 tensor: babelheads JSON, or a LAHIS ``.pth``/``.pt``
    holding one tensor. With ``layout``, its shape must be the model's."""
    path = Path(path)
    if not path.is_file():
        raise BabelheadsError(f"Head mask not found: {path}. Give a file written by babelheads adapt.")
    if path.suffix in (".pt", ".pth"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a bad file
            raise BabelheadsError(f"{path} is not a readable torch tensor file ({error}).") from error
        values = torch.as_tensor(loaded.detach() if isinstance(loaded, torch.Tensor) else loaded)
    else:
        try:
            data = json.loads(path.read_text())
            values = torch.tensor(data["values"], dtype=torch.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise BabelheadsError(
                f"{path} is not a head-mask file (JSON with a 'values' list of lists): {error}."
            ) from error
    values = values.double()
    if values.ndim != 2 or not torch.isfinite(values).all():
        raise BabelheadsError(
            f"{path}: a head mask is a finite (layers, heads) matrix; got {tuple(values.shape)}."
        )
    if layout is not None and tuple(values.shape) != (layout.num_layers, layout.num_heads):
        raise BabelheadsError(
            f"{path} is a {values.shape[0]} x {values.shape[1]} head mask, but this model has "
            f"{layout.num_layers} layers x {layout.num_heads} heads. Use a mask made for this model."
        )
    return values


def check_mask_fits(path: str | Path, layout: HeadLayout | None) -> None:
    """Refuse a mask of another shape than the model's before anything loads or is written; with no
    layout known yet (a model not inspectable without loading it), the file alone is checked."""
    read_head_mask(Path(path), layout)


def check_mask_for_run(path: str | Path, run: str | Path) -> None:
    """A mask applied under a source run's model (ablate's detection run, language-test's importance
    run): that run's manifest records the model's head layout, so no model is loaded to check it."""
    from babelheads.runs import RunStore

    store = RunStore(Path(run))
    layout = store.manifest().get("layout") if store.exists() else None
    check_mask_fits(path, layout_from_manifest(layout) if isinstance(layout, dict) else None)


def layout_from_manifest(layout: dict) -> HeadLayout:
    """The HeadLayout a run's manifest records (JSON turned its tuple into a list)."""
    return HeadLayout(**{**layout, "layer_windows": tuple(layout.get("layer_windows") or ())})


def head_mask_gates(path: str | Path | None, layout: HeadLayout):
    """Gates that apply a mask file in every phase; None without a file."""
    from babelheads.probe import HeadGates

    return None if path is None else HeadGates(read_head_mask(Path(path), layout))


def mask_digest(path: Path | None) -> str | None:
    """What a run's identity records of its mask: the values' hash, so a changed file is a new run."""
    if path is None:
        return None
    values = read_head_mask(path)
    return hashlib.sha256(values.numpy().tobytes()).hexdigest()[:16]
