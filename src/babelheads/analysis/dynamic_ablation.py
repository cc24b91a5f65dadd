"""A dynamic-ablate run's tables into per-sample outcomes, summaries per condition and the paired
contrasts of masking the dynamic heads against as many static or random heads.

samples : one row per sample, condition, k and seed: sample_id, language, condition, k, exact, rougeL.
steps : one row per decoded step and condition: sample_id, language, condition, k, dynamic_heads,
heads (the masked heads, space separated), kept, compensating, compensating_static.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from babelheads.analysis.stats import COLUMNS, MIN_UNITS, bootstrap_mean, columns, paired_contrast
from babelheads.analysis.stats import row as interval_row
from babelheads.errors import ThinDataWarning


def per_sample(samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, condition, k): the answer's exact match and ROUGE-L, and over the sample's
    retrieval steps (steps with a dynamic head) the share of tokens kept, the heads masked and the
    compensating heads. Random draws are averaged per sample."""
    keys = ["sample_id", "language", "condition", "k"]
    answers = samples.groupby(keys)[["exact", "rougeL"]].mean()
    retrieval = steps[(steps["dynamic_heads"] > 0) | (steps["condition"] == "clean")].copy()
    retrieval["k"] = retrieval["k"].where(retrieval["condition"] == "progressive", 0)
    retrieval["masked_heads"] = retrieval["heads"].str.split().str.len()
    columns = ["kept", "masked_heads", "compensating", "compensating_static"]
    per_step = retrieval.groupby(keys)[columns].mean().rename(columns={"kept": "token_kept"})
    return answers.join(per_step, how="left").reset_index()


def answered_right(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` (per_sample) of samples whose clean answer is right: a masked step cannot
    break an answer that was already wrong."""
    right = set(table.loc[(table["condition"] == "clean") & table["exact"].astype(bool), "sample_id"])
    return table[table["sample_id"].isin(right)]


def summary(table: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Per language, condition and k, over the n samples answered right (``samples_run`` ran): exact
    match, ROUGE-L and tokens kept with intervals (<metric>_lo, <metric>_hi; NaN under
    MIN_UNITS samples, with one warning naming the languages), and the mean heads masked and
    compensating."""
    used = answered_right(table)
    rows = []
    for (language, condition, k), group in table.groupby(["language", "condition", "k"]):
        chosen = used[(used["language"] == language) & (used["condition"] == condition) & (used["k"] == k)]
        row = {
            "language": language,
            "condition": condition,
            "k": k,
            "n": len(chosen),
            "samples_run": len(group),
        }
        for metric in ("exact", "rougeL", "token_kept"):
            measured = bootstrap_mean(chosen[metric].dropna().to_numpy(float), replicates, seed, warn=False)
            row.update(columns(metric, measured))
        for metric in ("masked_heads", "compensating", "compensating_static"):
            row[metric] = float(chosen[metric].mean()) if len(chosen) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if (table["n"] < MIN_UNITS).any():
        thin = sorted(set(table.loc[table["n"] < MIN_UNITS, "language"]))
        warnings.warn(
            f"{', '.join(thin)}: fewer than 2 samples answered right without masks: no intervals (NaN).",
            ThinDataWarning,
            stacklevel=2,
        )
    return table


def contrasts(table: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Paired per sample answered right (``table``: per_sample): each metric with the dynamic heads
    masked minus with as many static heads, and minus as many random heads (mean over draws); negative
    means masking dynamic heads hurts more. Each as value, lo, hi over n samples."""
    rows = []
    for language, group in answered_right(table).groupby("language"):
        for metric in ("token_kept", "exact"):
            wide = group[group["condition"].isin(["dynamic", "static", "random"])].pivot_table(
                index="sample_id", columns="condition", values=metric, aggfunc="mean"
            )
            for baseline in ("static", "random"):
                if {"dynamic", baseline} <= set(wide.columns):
                    # summary warns of thin languages once
                    contrast = paired_contrast(wide["dynamic"], wide[baseline], replicates, seed, warn=False)
                    rows.append(
                        {
                            "language": language,
                            "metric": metric,
                            "contrast": f"dynamic - {baseline}",
                            **interval_row(contrast),
                        }
                    )
    return pd.DataFrame(rows, columns=["language", "metric", "contrast", *COLUMNS])
