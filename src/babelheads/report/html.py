"""One static HTML report of retrieval-head and language-head runs that works offline.

Figures are embedded as base64 PNG, each with a caption and its numbers as a ``data:`` CSV link; the
page loads nothing from elsewhere. Runs are grouped per model. The report draws the tables the runs
wrote and recomputes no comparison: what ``compare --threshold 0.2`` wrote is what it shows.
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

from babelheads.analysis.aggregate import completed, with_success
from babelheads.analysis.findings import Finding, study_findings
from babelheads.errors import BabelheadsError
from babelheads.report import figures
from babelheads.report.compress_sections import COMPRESS_KINDS, compress_section
from babelheads.report.dynamic_sections import DYNAMIC_KINDS, dynamic_languages, dynamic_section
from babelheads.report.figures import Figure
from babelheads.report.language_sections import LANGUAGE_KINDS, language_section
from babelheads.report.rag_sections import RAG_KINDS, rag_section
from babelheads.report.text import ablation_summary, comparison_summary, detection_summary
from babelheads.runs import RunStore
from babelheads.sources import recorded_analysis

KINDS = ("detect", "compare", "ablate", *LANGUAGE_KINDS, *DYNAMIC_KINDS, *RAG_KINDS, *COMPRESS_KINDS)
COT_TITLE = "Chain-of-thought vs direct answers when retrieval heads are masked"
COT_CAPTION = (
    "Word problems asked with a reasoning prompt ('/cot') and a direct-answer prompt ('/direct'): exact "
    "numeric accuracy as K heads of each set are masked. Wu et al. (2024) report that masking retrieval "
    "heads hurts chain-of-thought far more than masking random heads. The text summary gives every "
    "change with its paired 95% interval."
)


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
    findings: list[Finding] = field(default_factory=list)


def _model_identity(store: RunStore) -> dict:
    """A run's model; a compare run's is that of the detection runs it read."""
    spec = store.manifest()["spec"]
    if spec.get("kind") == "compare":
        first = RunStore(Path(spec["runs"][0]))
        return first.manifest()["spec"].get("model", {}) if first.exists() else {}
    return spec.get("model", {})


def read_runs(paths: list[Path]) -> list[Run]:
    """Open each run: detect, compare and ablate runs can be reported."""
    if not paths:
        raise BabelheadsError("Give at least one run to report on.")
    runs = []
    for path in map(Path, paths):
        store = RunStore(path)
        manifest = store.manifest()
        spec = manifest["spec"]
        kind = spec.get("kind")
        if kind not in KINDS:
            raise BabelheadsError(f"{path} is a {kind!r} run; the report reads {', '.join(KINDS)} runs.")
        config = spec.get("config", {})
        if kind == "detect":
            task = config.get("task", {})
            languages = [pair.replace(":", ">") for pair in task.get("pairs", [])] or task.get(
                "languages", []
            )
        elif kind == "compare":
            languages = str(store.derived("settings")["languages"].iloc[0]).split()
        elif kind in DYNAMIC_KINDS:
            languages = dynamic_languages(kind, config)
        elif kind in RAG_KINDS:
            languages = list(config.get("languages", []))
        elif kind in COMPRESS_KINDS:
            languages = list(config["niah"]["languages"])
        elif kind in LANGUAGE_KINDS:
            texts = config.get("texts")
            languages = texts["languages"] if isinstance(texts, dict) else list(config.get("languages", []))
        else:
            languages = list(dict.fromkeys(store.derived("ablation")["language"]))
        identity = _model_identity(store)
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
    if min_samples < 1:
        raise BabelheadsError(
            f"--min-samples must be at least 1 (successful samples a language needs to be charted). "
            f"Got {min_samples}."
        )
    output = Path(output)
    # Checked before the figures are drawn: a directory cannot be replaced by the page's file.
    if output.is_dir():
        raise BabelheadsError(
            f"-o {output} is a directory; the report is one HTML file. Give a file path, e.g. "
            f"-o {output / 'report.html'}."
        )
    opened = read_runs(runs)
    page = render(opened, report_sections(opened, min_samples))
    temporary = output.with_name(output.name + ".tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise BabelheadsError(
            f"Cannot write the report to {output} ({error.strerror or error}). Choose another -o."
        ) from None
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
    compares = [run for run in runs if run.kind == "compare"]
    if compares:
        sections.append(findings_section(compares[0], [run for run in runs if run.kind == "ablate"]))
    for run in runs:
        if run.kind == "detect":
            sections.append(detection_section(run, min_samples))
    for run in runs:
        if run.kind == "compare":
            sections.append(crosslingual_section(run, min_samples))
    for run in runs:
        if run.kind == "ablate":
            table = run.store.derived("ablation")
            cot = "task" in table and (table["task"] == "cot").any()
            figure = (
                figures.ablation_curves(table, min_samples, COT_TITLE, COT_CAPTION)
                if cot
                else figures.ablation_curves(table, min_samples)
            )
            sections.append(
                Section(
                    f"Ablation run {run.path.name}", summary=ablation_summary(run.store), figures=[figure]
                )
            )
    sections += [language_section(run) for run in runs if run.kind in LANGUAGE_KINDS]
    sections += [dynamic_section(run) for run in runs if run.kind in DYNAMIC_KINDS]
    sections += [rag_section(run) for run in runs if run.kind in RAG_KINDS]
    sections += [compress_section(run) for run in runs if run.kind in COMPRESS_KINDS]
    return sections


def detection_section(run: Run, min_samples: int) -> Section:
    scores = run.store.derived("scores")
    settings, _ = recorded_analysis(run.store)
    samples = with_success(run.store.table("samples"), settings.success_threshold)
    successes = samples.groupby("language")["success"].sum().astype(int).to_dict()
    full = full_attention_layers(run.store.manifest())
    return Section(
        f"Detection run {run.path.name}",
        summary=detection_summary(run.store),
        figures=[
            figures.score_heatmap(scores, successes, min_samples, full),
            figures.distribution_chart(scores, successes, min_samples),
        ],
    )


def findings_section(compare: Run, ablations: list[Run]) -> Section:
    """The study's findings first, each with its verdict and a link to its figure below."""
    ablation = None
    for run in ablations:
        if not (run.store.root / "head_sets.parquet").exists():
            continue
        sets = run.store.derived("head_sets")
        if {"agnostic", "specific"} <= set(sets["name"]):
            ablation = {"head_sets": sets, "samples": completed(run.store.table("samples"))}
            break
    findings = study_findings(compare_tables(compare.store), ablation)
    return Section("Findings of the multilingual study", findings=findings)


def compare_tables(store: RunStore) -> dict[str, pd.DataFrame]:
    return {name: store.derived(name) for name in COMPARE_TABLES if (store.root / f"{name}.parquet").exists()}


def crosslingual_section(run: Run, min_samples: int) -> Section:
    """The tables a compare run wrote, drawn as they are: its threshold, its languages, its notes."""
    tables = compare_tables(run.store)
    settings = tables["settings"].iloc[0]
    threshold = float(settings["threshold"])
    kept = str(settings["languages"]).split()
    notes = list(tables.get("notes", pd.DataFrame({"note": []}))["note"])
    note = "; ".join(notes) + "." if notes else None
    section = Section(f"Across languages ({run.path.name})", summary=comparison_summary(tables, notes))
    section.figures.append(figures.accuracy_heatmap(tables["accuracy"]))
    if len(kept) >= 2 and "overlap" in tables:
        section.figures.append(figures.overlap_chart(tables["overlap"], note, threshold))
        section.figures.append(figures.generality_scatter(tables["generality"], len(kept), note, threshold))
    else:
        reason = " ".join(filter(None, ["Needs two languages with enough successful samples.", note]))
        data = pd.DataFrame({"language": kept})
        section.figures.append(
            Figure(
                figures.OVERLAP_TITLE, figures.OVERLAP_CAPTION.format(threshold=threshold), data, note=reason
            )
        )
        section.figures.append(
            Figure(
                figures.GENERALITY_TITLE,
                figures.GENERALITY_CAPTION.format(threshold=threshold),
                data,
                note=reason,
            )
        )
    if "rank_agreement" in tables:
        section.figures.append(figures.rank_matrix(tables["rank_agreement"], kept, note))
    if "translation" in tables and len(tables["translation"]):
        translation = tables["translation"]
        translation = translation.assign(
            condition=translation["condition"] + " " + translation["needle_kind"]
        )
        section.figures.append(figures.translation_chart(translation))
    return section


COMPARE_TABLES = (
    "settings",
    "notes",
    "accuracy",
    "heads",
    "overlap",
    "generality",
    "overlap_statistics",
    "rank_agreement",
    "rank_contrasts",
    "translation",
)


def full_attention_layers(manifest: dict) -> list[int] | None:
    """Full-attention layers from the head layout a detection run recorded; None when every layer is
    alike (nothing worth marking) or the run predates the record."""
    windows = manifest.get("layout", {}).get("layer_windows")
    if not windows or len(set(windows)) == 1:
        return None
    return [layer for layer, window in enumerate(windows) if window is None]


def _short(model: str) -> str:
    return Path(model).name if "/" in model and Path(model).is_absolute() else model


def json_key(data: dict) -> str:
    return repr(sorted(data.items()))


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
        f"<td>{escape(', '.join(run.languages))}</td>"
        f"<td>{'-' if run.kind == 'compare' else len(run.store.finished())}</td></tr>"
        for run in runs
    )
    anchors = [f"section-{index}" for index in range(1, len(sections) + 1)]
    contents = "".join(
        f"<li><a href='#{anchor}'>{escape(section.heading)}</a></li>"
        for anchor, section in zip(anchors, sections, strict=True)
    )
    numbers: list[list[int]] = []
    count = 0
    for section in sections:
        numbers.append(list(range(count + 1, count + len(section.figures) + 1)))
        count += len(section.figures)
    body = []
    for index, (anchor, section) in enumerate(zip(anchors, sections, strict=True)):
        tag = f"h{section.level}"
        body.append(f"<{tag} id='{anchor}'>{escape(section.heading)}</{tag}>")
        if section.summary:
            body.append(summary_html(section.summary))
        if section.findings:
            later = [
                (number, figure)
                for section_after, section_numbers in zip(sections[index:], numbers[index:], strict=True)
                for number, figure in zip(section_numbers, section_after.figures, strict=True)
            ]
            body.append(findings_html(section.findings, later))
        for number, figure in zip(numbers[index], section.figures, strict=True):
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


VERDICT_COLOURS = {"holds": "#1a7f37", "does not hold": "#b42318", "inconclusive": "#8a6d00"}


def findings_html(findings: list[Finding], figures_after: list[tuple[int, Figure]]) -> str:
    """A table: finding, verdict, the contrast's numbers and intervals, a link to its figure."""
    escape = html.escape
    rows = []
    for finding in findings:
        number = next((n for n, figure in figures_after if figure.title.startswith(finding.figure)), None)
        link = f"<a href='#figure-{number}'>Figure {number}</a>" if number else "no figure"
        colour = VERDICT_COLOURS.get(finding.verdict, "#444")
        rows.append(
            f"<tr class='finding' data-verdict='{escape(finding.verdict)}'><td>{finding.number}</td>"
            f"<td>{escape(finding.claim)}</td>"
            f"<td><strong style='color:{colour}'>{escape(finding.verdict)}</strong></td>"
            f"<td><em>{escape(finding.contrast)}</em><br>{escape(finding.evidence())}</td><td>{link}</td></tr>"
        )
    lead = (
        "<p>Each finding's contrast with its 95% bootstrap interval: it holds when the interval lies wholly "
        "on the side the paper claims, does not hold when it lies wholly on the other side, and is "
        "inconclusive otherwise. A finding with several parts holds when every part does.</p>"
    )
    return (
        lead + "<table class='runs findings'><tr><th>#</th><th>finding (paper)</th><th>verdict</th>"
        f"<th>contrast: value [95% interval]</th><th>figure</th></tr>{''.join(rows)}</table>"
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
