"""Score files in the official retrieval-head form, ``{"L-H": [score per sample, ...]}``, out and in.

The content stays the bare official map so the authors' loaders read it; the file name says which
variant it holds: ``retrieval_scores.<language>.<variant>.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import SCORE_VARIANTS, AggregateSettings, official_scores
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress
from babelheads.runs import RunStore

_NAME = re.compile(r"^retrieval_scores\.(?P<language>.+)\.(?P<variant>paper|official)\.json$")


def official_name(language: str, variant: str) -> str:
    return f"retrieval_scores.{language}.{variant}.json"


def export_official(
    store: RunStore, samples: pd.DataFrame, head_scores: pd.DataFrame, settings: AggregateSettings
) -> list[Path]:
    """Write one file per language for the settings' variant; returns the paths."""
    paths: list[Path] = []
    if head_scores.empty:  # every sample was skipped: nothing to export
        return paths
    for language in head_scores["language"].drop_duplicates():
        data = official_scores(samples, head_scores, settings, language)
        paths.append(store.write_json(official_name(language, settings.score), data))
    return paths


def read_official(path: Path, variant: str | None = None) -> pd.DataFrame:
    """A score file (ours or the authors') as a frame: layer, head, score (mean), samples, variant.

    The variant comes from ``variant`` or the file name; the authors' own files hold the official one.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BabelheadsError(f"{path} is not a readable score file ({error}).") from error
    if not isinstance(data, dict):
        raise BabelheadsError(f'{path} must hold a JSON object {{"L-H": [scores]}}.')
    match = _NAME.match(path.name)
    variant = variant or (match.group("variant") if match else "official")
    if variant not in SCORE_VARIANTS:
        raise BabelheadsError(f"Unknown score variant {variant!r}. Use one of: {', '.join(SCORE_VARIANTS)}.")
    rows = []
    for key, values in data.items():
        try:
            address = HeadAddress.parse(key)
        except ValueError as error:
            raise BabelheadsError(f"{path}: {error}") from error
        listed = values if isinstance(values, list) else [values]
        # float() would take "nan" or "1e3" as text and raise a bare ValueError on "high"; a score is
        # a JSON number (bool is an int to Python, but not a score).
        if any(isinstance(value, bool) or not isinstance(value, int | float) for value in listed):
            raise BabelheadsError(
                f"{path}: the scores of head {key!r} must be numbers (or a list of numbers). Got {values!r}."
            )
        values = [float(value) for value in listed]
        rows.append(
            {
                "layer": address.layer,
                "head": address.head,
                "score": float(np.mean(values)) if values else np.nan,
                "samples": len(values),
                "variant": variant,
            }
        )
    columns = ["layer", "head", "score", "samples", "variant"]
    return pd.DataFrame(rows, columns=columns).sort_values(["layer", "head"]).reset_index(drop=True)
