"""One static HTML report of detect and ablate runs that works offline.

Figures are embedded as base64 PNG, each with a caption and its numbers as a ``data:`` CSV link; the
page loads nothing from elsewhere. Runs are grouped per model; the detection runs of one model are
pooled for the cross-language figures.
"""

from __future__ import annotations

import base64
import html
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from babelheads.analysis import crosslingual
from babelheads.errors import BabelheadsError
from babelheads.experiments.compare import CompareConfig, crosslingual_tables, json_key
from babelheads.report import figures
from babelheads.report.figures import Figure
from babelheads.report.text import ablation_summary, comparison_summary, detection_summary
from babelheads.runs import RunStore

KINDS = ("detect", "ablate")


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    store: RunStore
    kind: str
    model: str
    model_key: str
    seed: int
    languages: list[str]


@dataclass
class Section:
    """A heading (level 2: a model, level 3: a part of it), an optional text summary and figures."""

    heading: str
    level: int = 3
    summary: str = ""
    figures: list[Figure] = field(default_factory=list)


def read_runs(paths: list[Path]) -> list[Run]:
    """Open each run; only detect and ablate runs can be reported."""
    if not paths:
        raise BabelheadsError("Give at least one run to report on.")
    runs = []
    for path in map(Path, paths):
        store = RunStore(path)
        manifest = store.manifest()
        spec = manifest["spec"]
        kind = spec.get("kind")
        if kind not in KINDS:
            raise BabelheadsError(f"{path} is a {kind!r} run; the report reads detect and ablate runs.")
        config = spec.get("config", {})
        identity = spec.get("model", {})
        if kind == "detect":
            languages = [pair.replace(":", ">") for pair in config.get("pairs", [])] or config["languages"]
        else:
            languages = list(config.get("languages") or dict.fromkeys(store.derived("ablation")["language"]))
        runs.append(
            Run(
                path,
                store,
                kind,
                str(identity.get("model", "unknown model")),
                json_key(identity),
                int(manifest.get("seed", config.get("seed", 0))),
                list(languages),
            )
        )
    return runs


def build_report(runs: list[Path], output: Path, min_samples: int = figures.MIN_SAMPLES) -> Path:
    """Write the report of ``runs`` to ``output`` (one self-contained HTML file) and return its path."""
    opened = read_runs(runs)
    page = render(opened, report_sections(opened, min_samples))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, output)
    return output


def report_sections(runs: list[Run], min_samples: int = figures.MIN_SAMPLES) -> list[Section]:
    """Every section of the report, models in the order their first run was given."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.model_key, []).append(run)
    sections = []
    for group in groups.values():
        sections += model_sections(group, min_samples)
    return sections


def model_sections(runs: list[Run], min_samples: int) -> list[Section]:
    sections = [Section(f"Model {_short(runs[0].model)}", level=2)]
    detects = [run for run in runs if run.kind == "detect"]
    if detects:
        stores = [run.store for run in detects]
        tables = crosslingual_tables(stores, CompareConfig())
        pooled = pd.concat([store.table("samples") for store in stores], ignore_index=True)
        sections.append(
            Section("Needle-in-a-haystack accuracy", figures=[figures.accuracy_heatmap(tables["accuracy"])])
        )
        full = full_attention_layers(detects[0].store.manifest())
        for run in detects:
            scores = run.store.derived("scores")
            successes = _successes(run.store.table("samples"))
            sections.append(
                Section(
                    f"Detection run {run.path.name}",
                    summary=detection_summary(run.store),
                    figures=[
                        figures.score_heatmap(scores, successes, min_samples, full),
                        figures.distribution_chart(scores, successes, min_samples),
                    ],
                )
            )
        sections.append(crosslingual_section(tables, _successes(pooled), min_samples))
    for run in runs:
        if run.kind == "ablate":
            table = run.store.derived("ablation")
            sections.append(
                Section(
                    f"Ablation run {run.path.name}",
                    summary=ablation_summary(run.store),
                    figures=[figures.ablation_curves(table, min_samples)],
                )
            )
    return sections


def crosslingual_section(
    tables: dict[str, pd.DataFrame], successes: dict[str, int], min_samples: int
) -> Section:
    """Overlap, strength vs generality and rank agreement over the languages with enough successful
    samples (a language scored on too few samples would look like one with no retrieval heads), and
    retrieval + translation."""
    section = Section("Across languages", summary=comparison_summary(tables, []))
    languages = list(dict.fromkeys(tables["heads"]["language"]))
    kept, thin = figures.split_thin(languages, successes, min_samples)
    note = "; ".join(thin) + "." if thin else None
    if len(languages) >= 2:
        if len(kept) >= 2:
            overlap, generality = _overlap_tables(tables["heads"], kept)
            section.figures.append(figures.overlap_chart(overlap, note))
            section.figures.append(figures.generality_scatter(generality, len(kept), note))
        else:
            counts = pd.DataFrame(
                {"language": languages, "successful_samples": [successes.get(x, 0) for x in languages]}
            )
            reason = " ".join(filter(None, ["Needs two languages with enough successful samples.", note]))
            section.figures.append(
                Figure(figures.OVERLAP_TITLE, figures.OVERLAP_CAPTION, counts, note=reason)
            )
            section.figures.append(
                Figure(figures.GENERALITY_TITLE, figures.GENERALITY_CAPTION, counts, note=reason)
            )
        if "rank_agreement" in tables:
            section.figures.append(figures.rank_matrix(tables["rank_agreement"], kept, note))
    if "translation" in tables:
        section.figures.append(figures.translation_chart(tables["translation"], successes, min_samples))
    return section


def _overlap_tables(heads: pd.DataFrame, languages: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compare tables 'overlap' and 'generality' restricted to ``languages``."""
    wide = heads.pivot_table(index=["layer", "head"], columns="language", values="score").sort_index()
    layers = wide.index.get_level_values("layer").to_numpy()
    head_index = wide.index.get_level_values("head").to_numpy()
    means = {language: wide[language].to_numpy() for language in languages}
    labels = [f"{layer}-{head}" for layer, head in wide.index]
    overlap = crosslingual.overlap_table(means, layers, labels)
    overlap["heads"] = overlap["heads"].map(" ".join)
    return overlap, crosslingual.generality_table(means, layers, head_index)


def _successes(samples: pd.DataFrame) -> dict[str, int]:
    return samples.groupby("language")["success"].sum().astype(int).to_dict()


def full_attention_layers(manifest: dict) -> list[int] | None:
    """Full-attention layers from the head layout a detection run recorded; None when every layer is
    alike (nothing worth marking) or the run predates the record."""
    windows = manifest.get("layout", {}).get("layer_windows")
    if not windows or len(set(windows)) == 1:
        return None
    return [layer for layer, window in enumerate(windows) if window is None]


def _short(model: str) -> str:
    return Path(model).name if "/" in model and Path(model).is_absolute() else model


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; }
header, main { max-width: 1060px; margin: 0 auto; padding: 0 20px; }
header { border-bottom: 1px solid #ddd; padding-bottom: 8px; }
h1 { margin: 20px 0 8px; font-size: 26px; }
h2 { margin-top: 36px; border-bottom: 2px solid #333; padding-bottom: 4px; }
h3 { margin-top: 28px; }
table.runs { border-collapse: collapse; font-size: 13px; width: 100%; }
table.runs th, table.runs td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.runs th { background: #f4f4f4; }
nav ul { columns: 2; font-size: 13px; padding-left: 18px; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 8px; font-size: 12px; overflow-x: auto; }
figure { margin: 18px 0 28px; padding: 12px; border: 1px solid #e3e3e3; border-radius: 4px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 14px; margin-top: 8px; }
figcaption a { white-space: nowrap; }
.note { background: #fff6dd; border-left: 4px solid #e0a800; padding: 6px 10px; font-size: 14px; }
.path { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
"""

# Marks each embedded figure that decoded (naturalWidth > 0), so a headless browser can check them.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll("figure img"));
  var ok = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.dataset.figuresOk = ok.length + "/" + images.length;
});
"""


def render(runs: list[Run], sections: list[Section]) -> str:
    """The page: header with the runs, a table of contents, then every section and figure."""
    escape = html.escape
    rows = "".join(
        f"<tr><td class='path' title='{escape(str(run.path))}'>{escape(run.path.name)}</td>"
        f"<td>{escape(run.kind)}</td><td class='path'>{escape(run.model)}</td><td>{run.seed}</td>"
        f"<td>{escape(', '.join(run.languages))}</td><td>{len(run.store.finished())}</td></tr>"
        for run in runs
    )
    anchors = [f"section-{index}" for index in range(1, len(sections) + 1)]
    contents = "".join(
        f"<li><a href='#{anchor}'>{escape(section.heading)}</a></li>"
        for anchor, section in zip(anchors, sections, strict=True)
    )
    body = []
    number = 0
    for anchor, section in zip(anchors, sections, strict=True):
        tag = f"h{section.level}"
        body.append(f"<{tag} id='{anchor}'>{escape(section.heading)}</{tag}>")
        if section.summary:
            body.append(summary_html(section.summary))
        for figure in section.figures:
            number += 1
            body.append(figure_html(figure, number))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>babelheads report</title><link rel='icon' href='data:,'>"
        f"<style>{STYLE}</style></head><body>"
        "<header><h1>babelheads report</h1>"
        "<table class='runs'><tr><th>run</th><th>kind</th><th>model</th><th>seed</th><th>languages</th>"
        f"<th>samples</th></tr>{rows}</table><nav><ul>{contents}</ul></nav></header>"
        f"<main>{''.join(body)}</main><script>{SCRIPT}</script></body></html>\n"
    )


def summary_html(text: str, open_up_to: int = 25) -> str:
    """The text summary; a long one (an ablation's every row) folded away behind its first line."""
    block = f"<pre>{html.escape(text)}</pre>"
    lines = text.count("\n") + 1
    if lines <= open_up_to:
        return block
    return f"<details><summary>Text summary ({lines} lines)</summary>{block}</details>"


def figure_html(figure: Figure, number: int) -> str:
    escape = html.escape
    slug = re.sub(r"[^a-z0-9]+", "-", figure.title.lower()).strip("-")[:60]
    parts = [f"<figure id='figure-{number}'>"]
    if figure.png is not None:
        width, height = png_size(figure.png)
        encoded = base64.b64encode(figure.png).decode("ascii")
        alt = f"{figure.title}. {figure.caption}"
        parts.append(
            f"<img src='data:image/png;base64,{encoded}' alt='{escape(alt)}' "
            f"width='{width}' height='{height}'>"
        )
    if figure.note:
        prefix = "Not drawn" if figure.png is None else "Left out"
        parts.append(f"<p class='note'>{prefix}: {escape(figure.note)}</p>")
    csv = base64.b64encode(figure.data.to_csv(index=False).encode("utf-8")).decode("ascii")
    parts.append(
        f"<figcaption><strong>Figure {number}. {escape(figure.title)}.</strong> {escape(figure.caption)} "
        f"<a class='csv' download='figure-{number}-{slug}.csv' href='data:text/csv;base64,{csv}'>"
        "Download the numbers (CSV)</a></figcaption></figure>"
    )
    return "".join(parts)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    return struct.unpack(">II", png[16:24])
