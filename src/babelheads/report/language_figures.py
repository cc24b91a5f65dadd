"""Figures of language-head runs: importance maps with the selected heads, their placement by layer,
masking effects against random heads, the cross-language perplexity matrix, and retrieval overlap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Rectangle

from babelheads.report.figures import WIDTH, Figure, _panels, _png, _styled

ROLE_MARKERS = {"specific": ("o", "#ff7f0e"), "general": ("s", "#d62728")}
EFFECT_COLOURS = {"masked": "#d62728", "random": "#7f7f7f"}


@_styled
def importance_maps(importance: pd.DataFrame, heads: pd.DataFrame, formula: str) -> Figure:
    """Layer x head importance, one panel per language; circles mark its specific heads, squares the
    general heads."""
    title = f"LAHIS importance per head ({formula} formula)"
    caption = (
        "Each cell is one query head (row: layer, column: head), coloured by its importance for the "
        "language (brighter: masking it raises the loss more). Circles mark the language's specific "
        "heads, squares the language-general heads (candidates in most languages)."
    )
    languages = sorted(importance["language"].unique())
    layers, count = int(importance["layer"].max()) + 1, int(importance["head"].max()) + 1
    figure, axes = _panels(len(languages), row_height=max(2.6, 0.2 * layers + 1.2))
    for ax, code in zip(axes, languages, strict=True):
        frame = importance[importance["language"] == code]
        grid = np.zeros((layers, count))
        grid[frame["layer"].to_numpy(), frame["head"].to_numpy()] = frame[formula].to_numpy()
        image = ax.imshow(grid, cmap="magma", aspect="auto", interpolation="nearest")
        figure.colorbar(image, ax=ax, shrink=0.8)
        for role, (marker, colour) in ROLE_MARKERS.items():
            chosen = heads[(heads["role"] == role) & (heads["language"] == code)]
            ax.scatter(
                chosen["head"],
                chosen["layer"],
                marker=marker,
                s=60,
                facecolors="none",
                edgecolors=colour,
                linewidths=1.8,
                label=role,
            )
        ax.set_title(code)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(0, count, math.ceil(count / 8)))
    axes[0].legend(fontsize=7, loc="lower right")
    data = importance.merge(
        heads[["language", "layer", "head", "role", "rank"]], how="left", on=["language", "layer", "head"]
    )
    return Figure(title, caption, data.reset_index(drop=True), png=_png(figure))


@_styled
def head_placement(heads: pd.DataFrame, layers: int) -> Figure:
    """How many specific heads (per language) and general heads sit in each layer."""
    title = "Where language-specific and language-general heads sit"
    caption = (
        "Heads selected per layer: stacked bars of each language's specific heads, and the general "
        "heads (shared by most languages) as a black line."
    )
    specific = heads[heads["role"] == "specific"]
    general = heads[heads["role"] == "general"].drop_duplicates(["layer", "head"])
    table = pd.crosstab(specific["layer"], specific["language"]).reindex(range(layers), fill_value=0)
    figure = MplFigure(figsize=(WIDTH, 3.2), layout="constrained")
    ax = figure.subplots()
    bottom = np.zeros(layers)
    for code in table.columns:
        ax.bar(range(layers), table[code], bottom=bottom, label=f"{code} specific")
        bottom += table[code].to_numpy()
    counts = general.groupby("layer").size().reindex(range(layers), fill_value=0)
    ax.plot(range(layers), counts.to_numpy(), color="black", marker="s", label="general")
    ax.set_xlabel("layer")
    ax.set_ylabel("heads")
    ax.set_xticks(range(layers))
    ax.legend(fontsize=7, ncols=3)
    data = table.assign(general=counts).reset_index().rename(columns={"index": "layer"})
    return Figure(title, caption, data, png=_png(figure))


@_styled
def masking_effects(table: pd.DataFrame, title: str, caption: str, unit: str) -> Figure:
    """Per language (and value), the change under the masked set and under random heads of the same
    count, each against no mask, with 95% intervals."""
    several = table["measure"].nunique() > 1
    rows = table.assign(label=table["language"] + (" " + table["measure"] if several else ""))
    figure = MplFigure(figsize=(WIDTH, max(2.4, 0.45 * len(rows) + 1.0)), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))
    for offset, name in ((-0.18, "masked"), (0.18, "random")):
        value = rows[f"{name}_minus_none"].to_numpy(dtype=float)
        error = np.abs(
            np.vstack([value - rows[f"{name}_minus_none_lo"], rows[f"{name}_minus_none_hi"] - value]).astype(
                float
            )
        )
        label = "language heads masked" if name == "masked" else "random heads (same count)"
        ax.barh(
            positions + offset,
            value,
            height=0.34,
            xerr=error,
            color=EFFECT_COLOURS[name],
            label=label,
            error_kw={"linewidth": 1},
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(positions, rows["label"] + " (" + rows["heads"] + ")")
    ax.invert_yaxis()
    ax.set_xlabel(f"change against no mask ({unit})")
    ax.legend(fontsize=7)
    return Figure(title, caption, table.reset_index(drop=True), png=_png(figure))


@_styled
def cross_matrix(matrix: pd.DataFrame, diagonality: pd.DataFrame) -> Figure:
    """Test language x masked-head language, the rise of log-perplexity, the diagonal outlined."""
    overall = diagonality[
        (diagonality["test_language"] == "all") & (diagonality["measure"] == "diagonal_difference")
    ]
    row = overall.iloc[0] if len(overall) else None
    verdict = (
        f" Overall, the diagonal exceeds the off-diagonal mean by {row['value']:+.3f} nats "
        f"[{row['lo']:+.3f}, {row['hi']:+.3f}]."
        if row is not None
        else ""
    )
    title = "Perplexity when one language's specific heads are masked (ppl-cross)"
    caption = (
        "Rows: the language tested; columns: whose specific heads are masked; cells: the rise of mean "
        "log-perplexity (nats per token) against no mask, paired per held-out text. LAHIS expects a "
        "strong diagonal: a language's own heads hurt it most." + verdict
    )
    wide = matrix.pivot(index="test_language", columns="heads_of", values="value")
    figure = MplFigure(
        figsize=(min(WIDTH, 1.2 * len(wide.columns) + 3), 0.8 * len(wide) + 1.5), layout="constrained"
    )
    ax = figure.subplots()
    image = ax.imshow(wide.to_numpy(), cmap="Reds", aspect="auto")
    figure.colorbar(image, ax=ax, label="rise of log-perplexity")
    ax.set_xticks(range(len(wide.columns)), wide.columns)
    ax.set_yticks(range(len(wide.index)), wide.index)
    ax.set_xlabel("specific heads of")
    ax.set_ylabel("tested on")
    for (i, j), value in np.ndenumerate(wide.to_numpy()):
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8)
        if wide.index[i] == wide.columns[j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    return Figure(title, caption, matrix.reset_index(drop=True), png=_png(figure))


@_styled
def retrieval_overlap_chart(table: pd.DataFrame) -> Figure:
    title = "Retrieval heads meet language heads"
    caption = (
        "Per language, how many of the detection run's retrieval heads are also language heads "
        "(specific, general, either), against the overlap two random sets of these sizes would have "
        "(hypergeometric expectation). The CSV gives P(overlap >= observed) and the shared heads."
    )
    rows = table.assign(label=table["language"] + " " + table["language_heads"])
    figure = MplFigure(figsize=(WIDTH, max(2.4, 0.32 * len(rows) + 1.0)), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))
    ax.barh(positions - 0.18, rows["overlap"], height=0.34, color="#1f77b4", label="observed overlap")
    ax.barh(
        positions + 0.18, rows["expected_by_chance"], height=0.34, color="#bbbbbb", label="expected by chance"
    )
    ax.set_yticks(positions, rows["label"])
    ax.invert_yaxis()
    ax.set_xlabel("heads")
    ax.legend(fontsize=7)
    return Figure(title, caption, table.reset_index(drop=True), png=_png(figure))
