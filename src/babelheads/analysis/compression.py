"""A compress run's answers into accuracy per condition and paired contrasts between policies.

samples : the compress run's finished samples, one row per sample and condition: sample_id, language,
policy, heads (the head set; '' for full and window), share, seed (a random-heads draw; -1 otherwise),
success, rouge1_recall, bytes_ratio, full_layers_ratio, kv_heads_full, kv_heads.
"""

from __future__ import annotations

import warnings

import pandas as pd

from babelheads.analysis.stats import COLUMNS, MIN_UNITS, bootstrap_mean, columns, paired_contrast, row
from babelheads.errors import ThinDataWarning


def equal_draws(samples: pd.DataFrame) -> pd.Series:
    """The random-heads rows whose draw is the head-split set itself (no random baseline: left out of
    accuracies and contrasts, and counted). Runs from before the flag have none."""
    if "equals_split" not in samples:
        return pd.Series(False, index=samples.index)
    return samples["equals_split"].fillna(False).astype(bool)


def compress_scores(samples: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Per language, policy, head set and share: accuracy over samples (random draws averaged per
    sample first) with its interval (accuracy_lo, accuracy_hi over n samples; NaN under MIN_UNITS
    samples, with one warning for the run), mean ROUGE-1 recall, byte ratios against full, KV heads
    kept whole, and the random draws left out because they equal the head-split set."""
    rows = []
    keys = ["language", "policy", "heads", "share"]
    equal = equal_draws(samples)
    left_out = samples[equal].groupby(keys)["seed"].nunique()
    samples = samples[~equal]
    for key, group in samples.groupby(keys, sort=True):
        per_sample = group.groupby("sample_id")[
            ["success", "rouge1_recall", "bytes_ratio", "full_layers_ratio"]
        ].mean()
        accuracy = bootstrap_mean(per_sample["success"].to_numpy(float), replicates, seed, warn=False)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n": len(per_sample),
                **columns("accuracy", accuracy),
                "rouge1_recall": float(per_sample["rouge1_recall"].mean()),
                "bytes_ratio": float(per_sample["bytes_ratio"].mean()),
                "full_layers_ratio": float(per_sample["full_layers_ratio"].mean()),
                "kv_heads_full": float(group["kv_heads_full"].mean()),
                "kv_heads": int(group["kv_heads"].iloc[0]),
                "draws_equal_to_split": int(left_out.get(key, 0)),
            }
        )
    scores = pd.DataFrame(rows)
    if (scores["n"] < MIN_UNITS).any():
        warnings.warn(
            "Some conditions have fewer than 2 samples: no intervals (NaN).", ThinDataWarning, stacklevel=2
        )
    return scores


def compress_contrasts(samples: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Paired per sample, at equal bytes: each head set's head-split (and head-budget) minus the
    uniform window and minus random heads (mean over draws), and head-split minus full; success rates
    with intervals (value, lo, hi over n paired samples; NaN under MIN_UNITS, which compress_scores warns
    of)."""
    rows = []
    samples = samples[~equal_draws(samples)]
    for (language, share), group in samples.groupby(["language", "share"], sort=True):
        if share == 1.0 and set(group["policy"]) == {"full"}:
            continue
        full = samples[(samples["language"] == language) & (samples["policy"] == "full")].set_index(
            "sample_id"
        )
        window = group[group["policy"] == "window"].set_index("sample_id")["success"]
        for heads, own in group[group["heads"] != ""].groupby("heads", sort=True):
            random = own[own["policy"] == "random-heads"].groupby("sample_id")["success"].mean()
            for policy in ("head-split", "head-budget"):
                chosen = own[own["policy"] == policy].set_index("sample_id")["success"]
                if chosen.empty:
                    continue
                for baseline, values in (
                    ("window", window),
                    ("random-heads", random),
                    ("full", full["success"]),
                ):
                    if values.empty:
                        continue
                    contrast = paired_contrast(chosen, values, replicates, seed, warn=False)
                    rows.append(
                        {
                            "language": language,
                            "share": share,
                            "heads": heads,
                            "contrast": f"{policy} - {baseline}",
                            **row(contrast),
                        }
                    )
    return pd.DataFrame(rows, columns=["language", "share", "heads", "contrast", *COLUMNS])
