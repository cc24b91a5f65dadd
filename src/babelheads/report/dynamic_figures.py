"""Figures of dynamic-heads runs: a step x head raster, the statistics across languages, CCA against
the lag with its baselines, the probes' precision-recall curves, and the dynamic ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from babelheads.heads import parse_label
from babelheads.report.figures import WIDTH, Figure, _panels, _png, _styled

PREDICTOR_STYLES = {
    "probe": ("#d62728", "-"),
    "static prior": ("#1f77b4", "--"),
    "shuffled labels": ("#7f7f7f", ":"),
}
CONDITION_COLOURS = {"clean": "#2ca02c", "dynamic": "#d62728", "static": "#1f77b4", "random": "#7f7f7f"}
STATISTICS = {
    "jaccard_static": "Jaccard with static top-K",
    "jaccard_adjacent": "Jaccard of adjacent steps",
    "entropy": "head-frequency entropy (line: ln K)",
}


@_styled
def raster(
    events: pd.DataFrame, static_heads: set[str], sample_id: str, column: str = "needle_copy"
) -> Figure:
    """One sample's dynamic heads, step by step; its language's static top-K heads shaded."""
    frame = events[events["sample_id"] == sample_id].copy()
    frame["name"] = frame["layer"].astype(str) + "-" + frame["head"].astype(str)
    active = frame[frame[column]]
    names = sorted(set(active["name"]) | static_heads, key=parse_label)
    steps = int(frame["step"].max()) + 1
    grid = np.zeros((len(names), steps))
    position = {name: index for index, name in enumerate(names)}
    for _, row in active.iterrows():
        grid[position[row["name"]], int(row["step"])] = 1
    figure = MplFigure(figsize=(WIDTH, max(2.2, 0.22 * len(names) + 1.2)), layout="constrained")
    ax = figure.subplots()
    for name in static_heads:
        ax.axhspan(position[name] - 0.5, position[name] + 0.5, color="#1f77b4", alpha=0.15, lw=0)
    ax.imshow(
        np.ma.masked_equal(grid, 0), cmap="Reds", vmin=0, vmax=1.2, aspect="auto", interpolation="nearest"
    )
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("decoding step")
    ax.set_ylabel("head (layer-head)")
    ax.set_title(f"{sample_id}: {int(grid.any(axis=0).sum())} of {steps} steps retrieve", fontsize=9)
    caption = (
        "Each red cell is a head whose top-1 attention at that step lies on a needle token equal to the "
        "token emitted (S = 1: a dynamic retrieval head). Shaded rows are the static top-K heads of the "
        "sample's language, chosen on other samples."
    )
    data = active[["sample_id", "step", "layer", "head", "token"]].reset_index(drop=True)
    return Figure("Dynamic retrieval heads of one sample, step by step", caption, data, png=_png(figure))


@_styled
def statistics_chart(stats: pd.DataFrame) -> Figure:
    figure, axes = _panels(len(STATISTICS), row_height=3.0)
    languages = sorted(stats["language"].unique())
    for ax, (name, label) in zip(axes, STATISTICS.items(), strict=True):
        rows = stats[stats["statistic"] == name].set_index("language").reindex(languages)
        x = np.arange(len(languages))
        values = rows["value"].to_numpy(float)
        errors = np.vstack([values - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - values])
        ax.errorbar(x, values, yerr=np.nan_to_num(errors), fmt="o", color="#d62728", capsize=4)
        if name == "entropy":
            ax.scatter(x, rows["reference"], marker="_", s=400, color="#1f77b4", label="ln K")
            ax.legend(fontsize=7)
        else:
            ax.set_ylim(0, 1.05)
        ax.set_xticks(x, languages)
        ax.set_title(label, fontsize=9)
    caption = (
        "Per language, over the retrieval steps of the test half (steps with at least one dynamic head), "
        "with 95% intervals that resample samples. A fixed head set would give Jaccards of 1 and an "
        "entropy of at most ln K; the paper reports Jaccard with the top-20 of 0.18-0.46, adjacent "
        "0.28-0.51 and entropy 3.0-4.9 against ln 20 = 3.0 for 8B models."
    )
    return Figure(
        "How dynamic are the retrieval heads? (Table 1 statistics)",
        caption,
        stats.reset_index(drop=True),
        png=_png(figure),
    )


@_styled
def cca_chart(cca: pd.DataFrame) -> Figure:
    languages = list(dict.fromkeys(cca["language"]))
    figure, axes = _panels(len(languages), row_height=2.8)
    for ax, language in zip(axes, languages, strict=True):
        rows = cca[cca["language"] == language]
        ax.plot(rows["lag"], rows["held_out"], "o-", color="#d62728", label="held-out")
        ax.plot(rows["lag"], rows["train"], "o-", color="#ff9896", label="training")
        ax.plot(rows["lag"], rows["shuffled_held_out"], ":", color="#7f7f7f", label="shuffled, held-out")
        ax.plot(rows["lag"], rows["shuffled_train"], "--", color="#bbbbbb", label="shuffled, training")
        ax.set_ylim(-0.2, 1.05)
        ax.set_title(language)
        ax.set_xlabel("lag k (steps)")
    axes[0].set_ylabel("top-1 canonical correlation")
    axes[0].legend(fontsize=6)
    caption = (
        "Top-1 canonical correlation between the final hidden state at step n and every head's graded "
        "retrieval score at step n + k (min-max scaled; PCA keeping 95% / 99% of variance; up to 50 "
        "components). Training-pair correlations of CCA are near 1 even on shuffled pairs when pairs are "
        "few: only the held-out line, above its shuffled baseline, is evidence."
    )
    return Figure(
        "Predicting heads from hidden states: CCA against the lag",
        caption,
        cca.reset_index(drop=True),
        png=_png(figure),
    )


@_styled
def probe_curves(curves: pd.DataFrame, scores: pd.DataFrame) -> Figure:
    languages = list(dict.fromkeys(curves["language"]))
    figure, axes = _panels(max(len(languages), 1), row_height=2.8)
    for ax, language in zip(axes, languages, strict=True):
        for name, (colour, style) in PREDICTOR_STYLES.items():
            rows = curves[(curves["language"] == language) & (curves["predictor"] == name)]
            score = scores[(scores["language"] == language) & (scores["predictor"] == name)]
            label = f"{name} (AUPRC {score['auprc'].iloc[0]:.2f})" if len(score) else name
            ax.plot(
                rows["recall"], rows["precision"], style, color=colour, label=label, drawstyle="steps-post"
            )
        ax.set_title(language)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("precision")
    caption = (
        "Precision-recall on the test samples of the MLP probe that predicts, from the final hidden state "
        "at step t, which heads are dynamic retrieval heads at t; against each head's base rate (static "
        "prior) and a probe trained on shuffled labels. Samples are split 70/20/10, never by step."
    )
    return Figure(
        "Predicting each step's retrieval heads: probe precision-recall",
        caption,
        scores.reset_index(drop=True),
        png=_png(figure),
    )


@_styled
def ablation_chart(summary: pd.DataFrame) -> Figure:
    languages = sorted(summary["language"].unique())
    figure = MplFigure(figsize=(WIDTH, 3.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    width = 0.8 / len(CONDITION_COLOURS)
    for index, (condition, colour) in enumerate(CONDITION_COLOURS.items()):
        rows = summary[(summary["condition"] == condition)].set_index("language").reindex(languages)
        x = np.arange(len(languages)) + (index - 1.5) * width
        values = rows["token_kept"].to_numpy(float)
        low, high = rows["token_kept_lo"].to_numpy(float), rows["token_kept_hi"].to_numpy(float)
        left.bar(
            x,
            values,
            width,
            color=colour,
            label=condition,
            yerr=np.nan_to_num([values - low, high - values]),
            capsize=2,
        )
    left.set_xticks(np.arange(len(languages)), languages)
    left.set_ylabel("tokens kept (retrieval steps)")
    left.set_ylim(0, 1.05)
    left.legend(fontsize=7)
    left.set_title("per-step masks of |D_t| heads", fontsize=9)
    progressive = summary[summary["condition"] == "progressive"]
    for language, rows in progressive.groupby("language"):
        rows = rows.sort_values("k")
        line = right.plot(rows["k"], rows["token_kept"], "o-", label=f"{language} tokens kept")[0]
        right.plot(
            rows["k"], rows["compensating"], "x--", color=line.get_color(), label=f"{language} compensating"
        )
    right.set_xlabel("k highest-ranked heads masked per step")
    right.set_title("progressive masking", fontsize=9)
    right.legend(fontsize=6)
    caption = (
        "Left: the share of retrieval steps whose token survives when that step's dynamic heads are masked "
        "(teacher-forced on the clean continuation), as many static top heads, or as many random heads "
        "(mean of draws), with 95% intervals over the samples answered right without masks. Right: masking "
        "the k highest-ranked heads of each step; dashed: heads that then copy the right token in their "
        "place (compensating heads) per step. The table also gives exact match of the whole answer."
    )
    return Figure("Dynamic ablation", caption, summary.reset_index(drop=True), png=_png(figure))
