"""The claims of head-guided KV-cache compression (beyond the seed papers: DuoAttention, RazorAttention
and HeadKV keep some heads' cache whole and shorten the rest).

Every contrast is paired by sample at equal bytes (the window and the random heads get the head-split
policy's byte budget) and resampled by sample; random draws are resampled with the samples. Parts:
one per language and share of KV heads kept whole, so "holds" means at every budget the run measured
and in every language (intersection-union).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.claims import (
    Context,
    Measured,
    against_random,
    claim_rows,
    nested_difference,
    nothing,
    register_claim,
)
from babelheads.analysis.compression import equal_draws

KV = "Head-guided KV-cache compression (DuoAttention, RazorAttention, HeadKV; beyond the seed papers)"
MARGIN = 0.10
"""The non-inferiority margin: head-split may lose at most this much accuracy against the full cache."""
FIGURE = "KV-cache compression: accuracy against bytes"
VS_WINDOW = register_claim(
    "kv.headsplit_vs_window",
    KV,
    "Keeping the retrieval heads' cache whole beats a uniform window at equal bytes.",
    figure=FIGURE,
)
VS_RANDOM = register_claim(
    "kv.headsplit_vs_random",
    KV,
    "Keeping the retrieval heads' cache whole beats keeping as many random heads whole, at equal bytes.",
    figure=FIGURE,
)
VS_FULL = register_claim(
    "kv.headsplit_vs_full",
    KV,
    f"Head-split matches the full cache: it loses less than {MARGIN:.2f} accuracy (non-inferiority).",
    figure=FIGURE,
)
UNIT = (
    "samples (paired across policies); against random heads: head-split compared with the spread of the "
    "random draws (a t prediction interval for one more draw, k - 1 df)"
)


def kv_claims(
    samples: pd.DataFrame, replicates: int, seed: int, context: Context
) -> list[tuple[dict, list[dict]]]:
    """The claims a compress run tests. samples : its finished rows (sample_id, language, policy, heads,
    share, seed, success; random draws: equals_split)."""
    parts: dict[str, list[Measured]] = {"window": [], "random": [], "full": []}
    excluded = 0
    full = _by_sample(samples[samples["policy"] == "full"])
    compressed = samples[(samples["policy"] == "head-split") & (samples["share"] < 1)]
    for (language, share, heads), split in compressed.groupby(["language", "share", "heads"], sort=True):
        label = f"{language}, share {share:g}" + (f", heads {heads}" if heads != language else "")
        chosen = _by_sample(split)
        same = samples[(samples["language"] == language) & (samples["share"] == share)]
        window = _by_sample(same[same["policy"] == "window"])
        random = same[(same["policy"] == "random-heads") & (same["heads"] == heads)]
        equal = equal_draws(random)
        excluded += int(random.loc[equal, "seed"].nunique())
        ran_random = not random.empty
        random = random[~equal]
        draws = random.pivot_table(index="sample_id", columns="seed", values="success", aggfunc="mean")
        parts["window"].append(_paired(label, chosen, window, "no window policy", replicates, seed))
        if draws.empty:
            reason = "every random draw is the head set itself" if ran_random else "no random-heads policy"
            parts["random"].append(nothing(label, reason))
        else:
            both = draws.join(chosen.rename("split"), how="inner").dropna()
            parts["random"].append(
                against_random(
                    label,
                    both["split"].to_numpy(float),
                    both[list(draws.columns)].to_numpy(float),
                    replicates,
                    seed,
                )
            )
        language_full = full.loc[full.index.isin(chosen.index)] if not full.empty else full
        parts["full"].append(_non_inferior(label, chosen, language_full, replicates, seed))
    missing = nothing("all", "no head-split policy below share 1")
    note = f"; {excluded} random draw(s) equal to the head-split set left out" if excluded else ""
    return [
        claim_rows(
            VS_WINDOW,
            parts["window"] or [missing],
            UNIT,
            "accuracy with head-split minus with a uniform sink + window of the same bytes, paired by sample",
            context,
        ),
        claim_rows(
            VS_RANDOM,
            parts["random"] or [missing],
            UNIT,
            "accuracy with head-split minus with as many random KV heads kept whole (same bytes; mean over "
            f"draws), paired by sample{note}",
            context,
        ),
        claim_rows(
            VS_FULL,
            parts["full"] or [missing],
            UNIT,
            f"{MARGIN:.2f} minus (full-cache accuracy minus head-split accuracy), paired by sample: holds "
            f"when the loss's upper bound is under {MARGIN:.2f}",
            context,
        ),
    ]


def _by_sample(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("sample_id")["success"].mean().astype(float)


def _paired(
    label: str, first: pd.Series, second: pd.Series, reason: str, replicates: int, seed: int
) -> Measured:
    if second.empty:
        return nothing(label, reason)
    both = pd.concat([first.rename("a"), second.rename("b")], axis=1, join="inner").dropna()
    return nested_difference(
        label, both[["a"]].to_numpy(float), both[["b"]].to_numpy(float), replicates, seed
    )


def _non_inferior(label: str, split: pd.Series, full: pd.Series, replicates: int, seed: int) -> Measured:
    if full.empty:
        return nothing(label, "no full-cache rows")
    if full.mean() == 0:
        return nothing(label, "full-cache accuracy 0: nothing to lose")
    both = pd.concat([split.rename("split"), full.rename("full")], axis=1, join="inner").dropna()
    margin = np.full((len(both), 1), MARGIN)
    # MARGIN - (full - split) = (split + MARGIN) - full: above 0 when head-split loses less than MARGIN
    return nested_difference(
        label, both[["split"]].to_numpy(float) + margin, both[["full"]].to_numpy(float), replicates, seed
    )
