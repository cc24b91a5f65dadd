"""Figures of compression runs: accuracy against cache bytes per language, and the cross-lingual
matrix (heads found in language X, needles in language Y)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from babelheads.report.figures import WIDTH, Figure, _png, _styled

POLICY_STYLES = {
    "full": ("#000000", "*"),
    "head-split": ("#d62728", "o"),
    "head-budget": ("#ff7f0e", "D"),
    "window": ("#1f77b4", "s"),
    "random-heads": ("#7f7f7f", "v"),
}


@_styled
def accuracy_bytes_chart(scores: pd.DataFrame) -> Figure:
    languages = sorted(scores["language"].unique())
    figure = MplFigure(figsize=(WIDTH, 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(languages), sharey=True))
    for ax, language in zip(axes, languages, strict=True):
        rows = scores[scores["language"] == language]
        for index, (policy, (colour, marker)) in enumerate(POLICY_STYLES.items()):
            chosen = rows[rows["policy"] == policy]
            if chosen.empty:
                continue
            values = chosen["accuracy"].to_numpy(float)
            low, high = chosen["accuracy_lo"].to_numpy(float), chosen["accuracy_hi"].to_numpy(float)
            ax.errorbar(
                chosen["bytes_ratio"] + (index - 2) * 0.006,  # policies at equal bytes side by side
                values,
                yerr=np.nan_to_num([values - low, high - values]),
                fmt=marker,
                color=colour,
                label=policy,
                capsize=2,
                alpha=0.8,
            )
        ax.set_title(language, fontsize=9)
        ax.set_xlabel("KV bytes / full")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("NIAH accuracy")
    axes[0].legend(fontsize=6)
    caption = (
        "Accuracy on held-out needles against the bytes the KV cache holds once the prompt is in, as a "
        "share of the full cache, per policy: the heads of a head set keep the whole context and the "
        "others a sink and a window (head-split); every head the same window at equal bytes (window); "
        "random heads kept whole, as many per layer (random-heads); a budget per head in proportion to "
        "its score (head-budget). One point per head set and share, policies at equal bytes drawn side by "
        "side; 95% intervals over samples. "
        "Sliding-window layers keep their own window under every policy."
    )
    return Figure(
        "KV-cache compression: accuracy against bytes",
        caption,
        scores.reset_index(drop=True),
        png=_png(figure),
    )


@_styled
def crosslingual_matrix(scores: pd.DataFrame, policy: str = "head-split") -> Figure:
    rows = scores[(scores["policy"] == policy) & (~scores["heads"].isin(["union", "intersection", "file"]))]
    share = rows["share"].min() if not rows.empty else np.nan
    rows = rows[rows["share"] == share]
    sources = sorted(rows["heads"].unique())
    targets = sorted(rows["language"].unique())
    grid = np.full((len(sources), len(targets)), np.nan)
    for _, row in rows.iterrows():
        grid[sources.index(row["heads"]), targets.index(row["language"])] = row["accuracy"]
    figure = MplFigure(figsize=(WIDTH * 0.5, 2.8), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(sources)):
        for j in range(len(targets)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("needles in language")
    ax.set_ylabel("heads found in language")
    figure.colorbar(image, ax=ax, shrink=0.8)
    caption = (
        f"{policy} accuracy when the KV heads kept whole are those of language X's retrieval heads and the "
        f"needles are in language Y (share {share:.2f} of KV heads kept whole). The diagonal uses a "
        "language's own heads."
    )
    return Figure(
        "Cross-lingual matrix of head-guided compression",
        caption,
        rows.reset_index(drop=True),
        png=_png(figure),
    )
