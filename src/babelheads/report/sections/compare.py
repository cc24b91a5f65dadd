"""The report section of a compare run: the comparison across languages."""

from __future__ import annotations

import pandas as pd

from babelheads.report import figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.figures import Figure
from babelheads.report.text import comparison_summary
from babelheads.runs import RunStore

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


def languages(store: RunStore, config: dict) -> list[str]:
    return str(store.derived("settings")["languages"].iloc[0]).split()


def compare_tables(store: RunStore) -> dict[str, pd.DataFrame]:
    return {name: store.derived(name) for name in COMPARE_TABLES if (store.root / f"{name}.parquet").exists()}


def draw(run: Run, page: Page) -> list[Section]:
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
    return [section]


SECTION = register_section(ReportSection("compare", languages, draw))
