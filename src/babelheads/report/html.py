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
from pathlib import Path

import pandas as pd

import babelheads.report.sections  # noqa: F401  (registers the built-in sections)
from babelheads.errors import BabelheadsError
from babelheads.report import figures
from babelheads.report.base import LEADS, SECTIONS, Page, Run, Section
from babelheads.report.figures import Figure
from babelheads.runs import RunStore


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
        if kind not in SECTIONS:
            raise BabelheadsError(f"{path} is a {kind!r} run; the report reads {', '.join(SECTIONS)} runs.")
        config = spec.get("config", {})
        languages = SECTIONS[kind].languages(store, config)
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
    """A model's heading, the registered leads (the claims), the kinds' lead sections, then each run's
    sections: one registered section at a time, its runs in the order they were given."""
    page = Page(runs, min_samples)
    drawn = [Section(f"Model {_short(runs[0].model)}", level=2)]
    for lead in LEADS:
        drawn += lead(runs, page)
    for entry in SECTIONS.values():
        if entry.lead is not None and any(run.kind == entry.kind for run in runs):
            drawn += entry.lead(runs, page)
    seen = []
    for entry in SECTIONS.values():
        if entry.draw in seen:  # one module drawing several kinds keeps their runs in the given order
            continue
        seen.append(entry.draw)
        kinds = {kind for kind, other in SECTIONS.items() if other.draw is entry.draw}
        for run in runs:
            if run.kind in kinds:
                drawn += entry.draw(run, page)
    return drawn


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
        if section.claims is not None:
            later = [
                (number, figure)
                for section_after, section_numbers in zip(sections[index:], numbers[index:], strict=True)
                for number, figure in zip(section_numbers, section_after.figures, strict=True)
            ]
            body.append(claims_html(section.claims, later))
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


def claims_html(claims: pd.DataFrame, figures_after: list[tuple[int, Figure]]) -> str:
    """A table: the claim, its verdict, estimate [95% interval] over n units, the test, why (when
    no data or inconclusive), the negative control's verdict, and a link to the figure that shows it."""
    from babelheads.analysis.claims import CLAIMS

    escape = html.escape
    rows = []
    for claim in claims.to_dict("records"):
        title = CLAIMS[claim["claim"]].figure if claim["claim"] in CLAIMS else ""
        number = next((n for n, figure in figures_after if title and figure.title.startswith(title)), None)
        link = f"<a href='#figure-{number}'>Figure {number}</a>" if number else "no figure"
        colour = VERDICT_COLOURS.get(claim["verdict"], "#444")
        estimate = (
            f"{claim['estimate']:+.3f} [{claim['lo']:+.3f}, {claim['hi']:+.3f}], n={int(claim['n'])} "
            if pd.notna(claim["estimate"])
            else ""
        )
        rows.append(
            f"<tr class='claim' data-verdict='{escape(claim['verdict'])}'>"
            f"<td><code>{escape(claim['claim'])}</code><br>{escape(claim['statement'])}</td>"
            f"<td><strong style='color:{colour}'>{escape(claim['verdict'])}</strong>"
            f"{'<br>' + escape(claim['reason']) if claim['reason'] else ''}</td>"
            f"<td>{escape(estimate)}<br><em>{escape(claim['test'])}</em> ({escape(claim['unit'])})</td>"
            f"<td>{escape(claim['control'] or 'not run')}</td><td>{link}</td></tr>"
        )
    lead = (
        "<p>Every claim's contrast is signed so that positive is the paper's side, with its 95% bootstrap "
        "interval: it holds when the interval lies above 0, does not hold when it lies below (for a claim "
        "over several parts: when a part is contradicted after Holm's correction), and is inconclusive "
        "otherwise; a claim over several parts holds only when every part does (the row shows the weakest "
        "part; the claim_parts table has them all). The control column is the claim's verdict on a "
        "negative control, on which it must not hold.</p>"
    )
    return (
        lead + "<table class='runs claims'><tr><th>claim</th><th>verdict</th>"
        "<th>estimate [95% interval]; test (unit)</th><th>control</th><th>figure</th></tr>"
        f"{''.join(rows)}</table>"
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
