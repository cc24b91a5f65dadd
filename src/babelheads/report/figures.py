"""Figures of the HTML report: matplotlib (Agg) charts built from run tables, each with its numbers.

Every builder returns a :class:`Figure`: a PNG when the data supports the chart, a ``note`` saying why
not (or which panels were left out), and ``data``, the exact numbers drawn, offered as CSV.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from babelheads.analysis.distribution import BINS, distribution
from babelheads.heads import head_label, parse_label

MIN_SAMPLES = 3
WIDTH = 10.0  # inches; at DPI 100 a figure is 1000 px wide
DPI = 100
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.titlesize": 11,
    "svg.hashsalt": "babelheads",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
BIN_COLOURS = ("#d9d9d9", "#c6dbef", "#4292c6", "#08306b")
SET_COLOURS = {"top": "#d62728", "agnostic": "#1f77b4", "specific": "#2ca02c", "random": "#7f7f7f"}
PLACEMENT_COLOURS = {"shared": "#1f77b4", "some": "#9467bd", "specific": "#ff7f0e"}


@dataclass
class Figure:
    """One report figure.

    png : the chart as PNG bytes, or None when nothing could be drawn.
    note : why the chart (or some of its panels) is missing; None when everything was drawn.
    data : the numbers drawn (or, for a note-only figure, the counts that ruled the chart out).
    """

    title: str
    caption: str
    data: pd.DataFrame
    png: bytes | None = None
    note: str | None = None


def _styled(builder: Callable[..., Figure]) -> Callable[..., Figure]:
    @wraps(builder)
    def wrapper(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return builder(*args, **kwargs)

    return wrapper


def _png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata: the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _panels(count: int, row_height: float, columns: int = 3) -> tuple[MplFigure, list[Axes]]:
    """A fixed-width figure with ``count`` panels, up to ``columns`` per row; unused axes hidden."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = MplFigure(figsize=(WIDTH, row_height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, list(axes[:count])


def thin_note(language: str, successes: int) -> str:
    plural = "" if successes == 1 else "s"
    return f"{language}: {successes} successful sample{plural}, too few to score heads"


def split_thin(
    languages: Sequence[str], successes: Mapping[str, int], min_samples: int
) -> tuple[list[str], list[str]]:
    """(languages with enough successful samples, notes for the others)."""
    kept = [language for language in languages if successes.get(language, 0) >= min_samples]
    notes = [
        thin_note(language, int(successes.get(language, 0))) for language in languages if language not in kept
    ]
    return kept, notes


def _success_counts(languages: Sequence[str], successes: Mapping[str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"language": list(languages), "successful_samples": [int(successes.get(x, 0)) for x in languages]}
    )


def _join(notes: list[str]) -> str | None:
    return "; ".join(notes) + "." if notes else None


def _samples_used(scores: pd.DataFrame) -> dict[str, int]:
    return scores.groupby("language", sort=False)["samples_used"].first().astype(int).to_dict()


@_styled
def score_heatmap(
    scores: pd.DataFrame,
    successes: Mapping[str, int] | None = None,
    min_samples: int = MIN_SAMPLES,
    full_layers: Sequence[int] | None = None,
) -> Figure:
    """Layer x head heat map of retrieval scores, one panel per language.

    scores : a detection run's ``scores`` table (language, layer, head, score, samples_used, variant, ...).
    successes : successful samples per language; defaults to the table's samples_used.
    full_layers : full-attention layers, marked on the axis when the model mixes them with sliding ones.
    """
    variant = str(scores["variant"].iloc[0]) if "variant" in scores and len(scores) else "paper"
    title = f"Retrieval score per head ({variant} variant)"
    caption = (
        "Each cell is one query head (row: layer, column: head); brighter means the head copied more of "
        "the answer from the needle. Heads that light up in every panel retrieve in every language."
    )
    languages = list(dict.fromkeys(scores["language"]))
    successes = successes if successes is not None else _samples_used(scores)
    kept, notes = split_thin(languages, successes, min_samples)
    if not kept:
        data = _success_counts(languages, successes)
        return Figure(title, caption, data, note=_join(notes) or "No scores in this run.")
    drawn = scores[scores["language"].isin(kept)]
    layers = int(drawn["layer"].max()) + 1
    heads = int(drawn["head"].max()) + 1
    top = max(1.0, float(drawn["score"].max()))
    figure, axes = _panels(len(kept), row_height=max(2.6, 0.24 * layers + 1.2))
    mixed = full_layers is not None and 0 < len(full_layers) < layers
    for ax, language in zip(axes, kept, strict=True):
        frame = drawn[drawn["language"] == language]
        grid = np.zeros((layers, heads))
        grid[frame["layer"].to_numpy(), frame["head"].to_numpy()] = frame["score"].to_numpy()
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto", interpolation="nearest")
        ax.set_title(f"{language}  ({int(successes.get(language, 0))} successful samples)")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(0, heads, math.ceil(heads / 8)))
        ticks = list(range(layers)) if layers <= 36 else list(range(0, layers, max(1, layers // 18)))
        ax.set_yticks(ticks)
        if mixed:
            ax.set_yticklabels([f"{t} full" if t in full_layers else str(t) for t in ticks])
            for label, tick in zip(ax.get_yticklabels(), ticks, strict=True):
                if tick in full_layers:
                    label.set_fontweight("bold")
        if layers * heads <= 160:
            for (layer, head), value in np.ndenumerate(grid):
                if value > 0:
                    colour = "black" if value > 0.6 * top else "white"
                    ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.8 if len(axes) <= 3 else 0.5, label="retrieval score")
    if mixed:
        caption += " Layers labelled 'full' use full attention; the others use a sliding window."
    data = drawn[["language", "layer", "head", "kv_head", "score", "samples_used"]].reset_index(drop=True)
    return Figure(title, caption, data, png=_png(figure), note=_join(notes))


@_styled
def distribution_chart(
    scores: pd.DataFrame, successes: Mapping[str, int] | None = None, min_samples: int = MIN_SAMPLES
) -> Figure:
    """Share of heads per Wu et al. score bin (= 0, (0, 0.1), [0.1, 0.5), [0.5, 1]), stacked per language.

    Data columns: language, heads, then one share column per bin.
    """
    title = "How many heads retrieve: score distribution (Wu et al. Fig. 3)"
    caption = (
        "Each bar splits all heads of the model by retrieval score; retrieval heads are the blue part "
        "(score >= 0.1), and a sparse mechanism shows as a short dark segment."
    )
    languages = list(dict.fromkeys(scores["language"]))
    successes = successes if successes is not None else _samples_used(scores)
    kept, notes = split_thin(languages, successes, min_samples)
    if not kept:
        return Figure(title, caption, _success_counts(languages, successes), note=_join(notes))
    drawn = scores[scores["language"].isin(kept)]
    shares = distribution(drawn).reindex(kept)
    figure = MplFigure(figsize=(WIDTH, 1.4 + 0.5 * len(kept)), layout="constrained")
    ax = figure.subplots()
    left = np.zeros(len(kept))
    for name, colour in zip(BINS, BIN_COLOURS, strict=True):
        values = shares[name].to_numpy()
        ax.barh(kept, values, left=left, color=colour, label=name, edgecolor="white", height=0.6)
        for y, (start, width) in enumerate(zip(left, values, strict=True)):
            if width >= 0.05:
                colour_text = "white" if name in BINS[2:] else "black"
                ax.text(start + width / 2, y, f"{width:.0%}", ha="center", va="center", color=colour_text)
        left += values
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of heads")
    figure.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=4, frameon=False)
    data = shares.reset_index().rename(columns={"index": "language"})
    data.insert(1, "heads", drawn.groupby("language").size().reindex(kept).to_numpy())
    return Figure(title, caption, data, png=_png(figure), note=_join(notes))


OVERLAP_TITLE = "Which languages share retrieval heads"
OVERLAP_CAPTION = (
    "Bars count the heads that are retrieval heads (score >= {threshold}, as set in compare) in exactly "
    "the languages marked below them; the right panel places each of those heads at its layer."
)
GENERALITY_TITLE = "Strength vs generality of heads"
GENERALITY_CAPTION = (
    "Each dot is a head: how many languages it is a retrieval head in (score >= {threshold}; x, "
    "jittered) against its highest score in any language (y). Strong heads on the right serve every "
    "language."
)


def _spread(layers: list[int], step: float = 0.12) -> np.ndarray:
    """Vertical offsets that fan out heads on the same layer, so that none hides another."""
    seen: dict[int, int] = {}
    offsets = []
    for layer in layers:
        index = seen.get(layer, 0)
        seen[layer] = index + 1
        offsets.append((index - (layers.count(layer) - 1) / 2) * step)
    return np.clip(offsets, -0.4, 0.4)


def _placement(n_languages: int, total: int) -> str:
    if n_languages == total:
        return "shared"
    return "specific" if n_languages == 1 else "some"


@_styled
def overlap_chart(overlap: pd.DataFrame, note: str | None = None, threshold: float = 0.1) -> Figure:
    """UpSet-style overlap: bars of head counts per exact language subset, a dot matrix beneath, and
    where those heads sit (layer strip coloured shared / in some / language-specific).

    overlap : the compare table (languages 'de+en', n_languages, count, heads 'L-H ...', mean_layer).
    """
    title, caption = OVERLAP_TITLE, OVERLAP_CAPTION.format(threshold=threshold)
    languages = list(overlap.loc[overlap["n_languages"] == 1, "languages"])
    total = len(languages)
    shown = overlap[overlap["count"] > 0].sort_values(["count", "n_languages"], ascending=[False, False])
    data = shown.reset_index(drop=True)
    if shown.empty:
        return Figure(
            title,
            caption,
            overlap.reset_index(drop=True),
            note=" ".join(filter(None, [f"No head reaches score {threshold} in any language.", note])),
        )
    figure = MplFigure(figsize=(WIDTH, 3.2 + 0.35 * total), layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=[3, 0.6 + 0.3 * total], width_ratios=[3, 2])
    bars, dots, strip = (
        figure.add_subplot(grid[0, 0]),
        figure.add_subplot(grid[1, 0]),
        figure.add_subplot(grid[:, 1]),
    )
    x = np.arange(len(shown))
    colours = [PLACEMENT_COLOURS[_placement(n, total)] for n in shown["n_languages"]]
    bars.bar(x, shown["count"], color=colours, width=0.6)
    for position, count in zip(x, shown["count"], strict=True):
        bars.text(position, count, str(count), ha="center", va="bottom")
    bars.set_ylabel("heads")
    bars.yaxis.get_major_locator().set_params(integer=True)
    bars.set_xticks([])
    bars.set_xlim(-0.5, len(shown) - 0.5)
    bars.margins(y=0.15)
    for position, subset in zip(x, shown["languages"], strict=True):
        members = [languages.index(code) for code in subset.split("+")]
        dots.scatter([position] * total, range(total), color="#dddddd", s=40, zorder=1)
        dots.scatter([position] * len(members), members, color="#333333", s=40, zorder=2)
        dots.plot([position, position], [min(members), max(members)], color="#333333", zorder=1)
    dots.set_yticks(range(total), languages)
    dots.set_ylim(total - 0.5, -0.5)
    dots.set_xlim(-0.5, len(shown) - 0.5)
    dots.set_xticks([])
    for side in ("left", "bottom"):
        dots.spines[side].set_visible(False)
    categories = [c for c in PLACEMENT_COLOURS if c != "some" or total > 2]
    labels = {"shared": f"all {total} languages", "some": "some languages", "specific": "one language"}
    placed: dict[str, list[int]] = {category: [] for category in categories}
    for row in shown.itertuples():
        category = _placement(row.n_languages, total)
        placed[category] += [parse_label(head)[0] for head in row.heads.split()]
    for position, (category, layers) in enumerate(placed.items()):
        strip.scatter(layers, position + _spread(layers), color=PLACEMENT_COLOURS[category], s=18, alpha=0.8)
    strip.set_yticks(range(len(categories)), [labels[c] for c in categories])
    strip.set_ylim(len(categories) - 0.5, -0.5)
    strip.set_xlabel("layer")
    strip.set_title("layer of each retrieval head")
    strip.xaxis.get_major_locator().set_params(integer=True)
    return Figure(title, caption, data, png=_png(figure), note=note)


@_styled
def generality_scatter(
    generality: pd.DataFrame, languages: int, note: str | None = None, threshold: float = 0.1
) -> Figure:
    """Strength vs generality: x = number of languages a head retrieves in (jittered), y = its max score.

    generality : the compare table (layer, head, n_languages, max_score, mean_score).
    """
    title, caption = GENERALITY_TITLE, GENERALITY_CAPTION.format(threshold=threshold)
    data = generality.reset_index(drop=True)
    if not (generality["max_score"] > 0).any():
        reason = "No head scores above 0 in any language."
        return Figure(title, caption, data, note=" ".join(filter(None, [reason, note])))
    rng = np.random.default_rng(0)
    x = generality["n_languages"].to_numpy() + rng.uniform(-0.18, 0.18, len(generality))
    figure = MplFigure(figsize=(WIDTH, 4.2), layout="constrained")
    ax = figure.subplots()
    points = ax.scatter(x, generality["max_score"], c=generality["layer"], cmap="viridis", s=22, alpha=0.85)
    bar = figure.colorbar(points, ax=ax, label="layer")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    best = generality.sort_values(["max_score", "layer", "head"], ascending=[False, True, True]).head(5)
    for index, row in best.iterrows():
        if row["max_score"] > 0:
            ax.annotate(
                head_label(row["layer"], row["head"]),
                (x[index], row["max_score"]),
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(languages + 1))
    ax.set_xlim(-0.5, languages + 0.5)
    ax.set_xlabel(f"languages in which the head is a retrieval head (score >= {threshold})")
    ax.set_ylabel("highest score in any language")
    ax.axhline(threshold, color="#999999", linestyle=":", linewidth=1)
    return Figure(title, caption, data, png=_png(figure), note=note)


def _pair_value(table: pd.DataFrame, first: str, second: str) -> pd.Series | None:
    for pair in (f"{first}-{second}", f"{second}-{first}"):
        match = table[table["pair"] == pair]
        if len(match):
            return match.iloc[0]
    return None


@_styled
def rank_matrix(rank_agreement: pd.DataFrame, languages: Sequence[str], note: str | None = None) -> Figure:
    """Language x language Spearman correlation of head scores over all heads, with 95% intervals.

    rank_agreement : the compare table (pair 'de-en', subset, spearman, spearman_lo, spearman_hi, ...).
    """
    title = "Do languages rank heads alike? (Spearman over all heads)"
    caption = (
        "Each cell is the rank correlation of all heads' scores between two languages, with its 95% "
        "bootstrap interval over samples; 1 means the same head order, 0 none."
    )
    table = rank_agreement[rank_agreement["subset"] == "all"]
    rows = [(a, b, _pair_value(table, a, b)) for i, a in enumerate(languages) for b in languages[i + 1 :]]
    rows = [(a, b, row) for a, b, row in rows if row is not None]
    columns = [
        c for c in ("pair", "heads", "spearman", "spearman_lo", "spearman_hi", "kendall") if c in table
    ]
    data = pd.DataFrame([row[columns] for _, _, row in rows], columns=columns).reset_index(drop=True)
    reason = None
    if len(languages) < 2:
        reason, data = "Needs two languages with enough successful samples.", table.reset_index(drop=True)
    elif data.empty or not np.isfinite(data["spearman"].astype(float)).any():
        reason = "No language pair has heads with differing scores, so no correlation can be computed."
    if reason:
        return Figure(title, caption, data, note=" ".join(n for n in (reason, note) if n))
    n = len(languages)
    figure = MplFigure(figsize=(min(WIDTH, 2.6 + 1.4 * n), min(1.2 + 1.0 * n, 9.0)), layout="constrained")
    ax = figure.subplots()
    grid = np.full((n, n), np.nan)
    np.fill_diagonal(grid, 1.0)
    cells: dict[tuple[int, int], str] = {}
    for a, b, row in rows:
        i, j = languages.index(a), languages.index(b)
        value = float(row["spearman"])
        grid[i, j] = grid[j, i] = value
        text = (
            "n/a"
            if not np.isfinite(value)
            else f"{value:.2f}\n[{row['spearman_lo']:.2f}, {row['spearman_hi']:.2f}]"
        )
        cells[(i, j)] = cells[(j, i)] = text
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-1, vmax=1)
    for (i, j), text in cells.items():
        value = grid[i, j]
        colour = "white" if np.isfinite(value) and abs(value) > 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour)
    for i in range(n):
        ax.text(i, i, "1", ha="center", va="center", color="white")
    ax.set_xticks(range(n), languages)
    ax.set_yticks(range(n), languages)
    ax.spines[:].set_visible(False)
    figure.colorbar(image, ax=ax, shrink=0.8, label="Spearman correlation")
    return Figure(title, caption, data, png=_png(figure), note=note)


@_styled
def accuracy_heatmap(accuracy: pd.DataFrame) -> Figure:
    """NIAH accuracy by context length (rows) and needle depth (columns), one panel per condition.

    accuracy : language, length, depth, accuracy, rouge1_recall, samples, and optionally tokens (the
    prompts' actual mean length), shown beside each requested length.
    """
    title = "Needle-in-a-haystack accuracy by context length and depth"
    caption = (
        "Share of samples whose answer was retrieved (ROUGE-1 recall > threshold), green = all, red = none; "
        "n is the number of samples in the cell."
    )
    data = accuracy.reset_index(drop=True)
    if accuracy.empty:
        return Figure(title, caption, data, note="No finished samples.")
    conditions = list(dict.fromkeys(accuracy["language"]))
    lengths = sorted(accuracy["length"].unique())
    depths = sorted(accuracy["depth"].unique())
    figure, axes = _panels(len(conditions), row_height=max(2.4, 0.45 * len(lengths) + 1.6))
    for ax, condition in zip(axes, conditions, strict=True):
        frame = accuracy[accuracy["language"] == condition]
        wide = frame.pivot_table(index="length", columns="depth", values="accuracy").reindex(
            index=lengths, columns=depths
        )
        counts = frame.pivot_table(index="length", columns="depth", values="samples").reindex(
            index=lengths, columns=depths
        )
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#eeeeee")
        image = ax.imshow(
            np.ma.masked_invalid(wide.to_numpy(dtype=float)), cmap=cmap, vmin=0, vmax=1, aspect="auto"
        )
        if len(lengths) * len(depths) <= 80:
            for (i, j), value in np.ndenumerate(wide.to_numpy(dtype=float)):
                if np.isfinite(value):
                    ax.text(
                        j, i, f"{value:.0%}\nn={counts.iat[i, j]:.0f}", ha="center", va="center", fontsize=7
                    )
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        if "tokens" in frame:
            actual = frame.groupby("length")["tokens"].mean().reindex(lengths)
            labels = [
                f"{x} ({t:.0f})" if np.isfinite(t) else str(x) for x, t in zip(lengths, actual, strict=True)
            ]
            ax.set_ylabel("length (actual), tokens")
        else:
            labels = [str(x) for x in lengths]
            ax.set_ylabel("context length (tokens)")
        ax.set_yticks(range(len(lengths)), labels)
        ax.set_xlabel("needle depth (in tokens)")
        overall = frame["accuracy"].mul(frame["samples"]).sum() / frame["samples"].sum()
        ax.set_title(f"{condition}  ({overall:.0%} overall)")
    figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    return Figure(title, caption, data, png=_png(figure))


TRANSLATION_PANELS = {
    "attention": "attention on the needle (top heads)",
    "copy": "copy score of top heads",
    "accuracy": "accuracy",
}


@_styled
def translation_chart(
    translation: pd.DataFrame, successes: Mapping[str, int] | None = None, min_samples: int = MIN_SAMPLES
) -> Figure:
    """Retrieval + translation ('en>zh') vs monolingual ('en'): grouped bars with 95% intervals.

    translation : condition, monolingual, measure ({copy,attention,accuracy}_{mono,translation}), value,
    lo, hi. A condition whose source language has too few successful samples is left out: its top
    heads would be picked from noise.
    """
    title = "Retrieval + translation vs monolingual retrieval"
    caption = (
        "For each 'source>answer' condition, the source language's top retrieval heads: how much they copy "
        "and attend to the needle, and accuracy, answering in the source language (mono) vs translating, "
        "split by needle kind. For fact needles a translated answer's tokens are not in the source answer "
        "span, so their copy score is 0 by construction: read needle attention for them. Keys (codes, "
        "numbers) are copied verbatim in every language, so both measures apply."
    )
    conditions = list(dict.fromkeys(translation["condition"])) if len(translation) else []
    notes = []
    kept = []
    for condition in conditions:
        frame = translation[translation["condition"] == condition]
        source = str(frame["monolingual"].iloc[0])
        if successes is not None and successes.get(source, 0) < min_samples:
            notes.append(f"{condition}: source {thin_note(source, int(successes.get(source, 0)))}")
        elif not np.isfinite(frame["value"].astype(float)).any():
            notes.append(f"{condition}: nothing to compare")
        else:
            kept.append(condition)
    data = translation[translation["condition"].isin(kept)].reset_index(drop=True)
    if not kept:
        return Figure(
            title,
            caption,
            translation.reset_index(drop=True),
            note=_join(notes) or "No translation conditions.",
        )
    figure, axes = _panels(len(TRANSLATION_PANELS), row_height=3.4)
    x = np.arange(len(kept))
    for ax, (prefix, label) in zip(axes, TRANSLATION_PANELS.items(), strict=True):
        for offset, (suffix, colour) in zip(
            (-0.2, 0.2), (("mono", "#1f77b4"), ("translation", "#ff7f0e")), strict=True
        ):
            rows = data[data["measure"] == f"{prefix}_{suffix}"].set_index("condition").reindex(kept)
            values = rows["value"].to_numpy(dtype=float)
            lo, hi = rows["lo"].to_numpy(dtype=float), rows["hi"].to_numpy(dtype=float)
            errors = np.clip(np.vstack([values - lo, hi - values]), 0, None)
            ax.bar(x + offset, np.nan_to_num(values), width=0.4, color=colour, label=suffix)
            ax.errorbar(x + offset, values, yerr=errors, fmt="none", ecolor="black", capsize=3)
            tops = np.fmax(values, hi)  # labels above the whisker, not on it
            for position, value, top in zip(x + offset, values, tops, strict=True):
                text = "n/a" if not np.isfinite(value) else f"{value:.2f}"
                ax.text(position, np.nan_to_num(top), text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, kept)
        ax.set_xlim(-0.7, len(kept) - 0.3)
        ax.set_title(label)
        ax.margins(y=0.2)
    axes[0].legend(loc="upper right")
    return Figure(title, caption, data, png=_png(figure), note=_join(notes))


def _ablation_lines(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (head_set, k): accuracy (mean over random seeds), accuracy_min/max, seeds."""
    grouped = frame[frame["head_set"] != "none"].groupby(["head_set", "k"], sort=True)
    return grouped.agg(
        accuracy=("accuracy", "mean"),
        accuracy_min=("accuracy", "min"),
        accuracy_max=("accuracy", "max"),
        heads_masked=("count", "mean"),
        seeds=("seed", "nunique"),
        samples=("n", "first"),
    ).reset_index()


@_styled
def ablation_curves(
    ablation: pd.DataFrame,
    min_samples: int = MIN_SAMPLES,
    title: str | None = None,
    caption: str | None = None,
) -> Figure:
    """NIAH accuracy against the number of masked heads K, per head set, one panel per language.

    ablation : an ablate run's table (head_set, k, seed, count, language, accuracy, n, method,
    phases, ...). 'random' is drawn as the mean over seeds with its min-max band, 'none' as a line.
    A language whose unmasked baseline retrieves fewer than ``min_samples`` samples gets no panel:
    accuracy cannot drop from nothing.
    """
    method = ", ".join(map(str, dict.fromkeys(ablation["method"]))) if len(ablation) else "?"
    phases = ", ".join(map(str, dict.fromkeys(ablation["phases"]))) if len(ablation) else "?"
    title = title or f"Accuracy when heads are masked (method {method}, phases {phases})"
    caption = caption or (
        "Accuracy as K heads of each set are masked (highest-scoring first); the dashed line is the "
        "unmasked model, grey the mean over random head sets with its min-max band. A steep fall means "
        "the set matters."
    )
    languages = list(dict.fromkeys(ablation["language"])) if len(ablation) else []
    notes, kept = [], []
    for language in languages:
        base = ablation[(ablation["language"] == language) & (ablation["head_set"] == "none")]
        retrieved = round(float((base["accuracy"] * base["n"]).sum())) if len(base) else 0
        if base.empty or retrieved < min_samples:
            notes.append(
                f"{language}: unmasked model retrieves {retrieved} sample{'s' * (retrieved != 1)}, "
                "too few to measure a drop"
            )
        else:
            kept.append(language)
    if not kept:
        return Figure(
            title, caption, ablation.reset_index(drop=True), note=_join(notes) or "No ablation results."
        )
    figure, axes = _panels(len(kept), row_height=3.4)
    frames = []
    for ax, language in zip(axes, kept, strict=True):
        frame = ablation[ablation["language"] == language]
        baseline = float(frame.loc[frame["head_set"] == "none", "accuracy"].iloc[0])
        lines = _ablation_lines(frame)
        order = {name: index for index, name in enumerate(SET_COLOURS)}
        lines = lines.sort_values("head_set", key=lambda c: c.map(order).fillna(len(order)), kind="stable")
        for head_set, line in lines.groupby("head_set", sort=False):
            colour = SET_COLOURS.get(str(head_set))
            ax.plot(line["k"], line["accuracy"], marker="o", color=colour, label=str(head_set))
            if head_set == "random":
                ax.fill_between(
                    line["k"],
                    line["accuracy_min"],
                    line["accuracy_max"],
                    color=colour,
                    alpha=0.2,
                    linewidth=0,
                )
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="none (unmasked)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("heads masked (K)")
        ax.set_ylabel("accuracy")
        ax.set_title(language)
        ax.set_xticks(sorted(lines["k"].unique()))
        base = pd.DataFrame(
            [
                {
                    "head_set": "none",
                    "k": 0,
                    "accuracy": baseline,
                    "accuracy_min": baseline,
                    "accuracy_max": baseline,
                }
            ]
        )
        frames.append(pd.concat([base, lines], ignore_index=True).assign(language=language))
    axes[0].legend(fontsize=8)
    data = pd.concat(frames, ignore_index=True)
    data = data[["language", *[c for c in data.columns if c != "language"]]]
    return Figure(title, caption, data, png=_png(figure), note=_join(notes))
