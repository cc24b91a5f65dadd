"""What every report section shares: a run as the report sees it, a section of the page, and the
registry of sections by kind of run. A kind's section is one module of ``report/sections/`` that
registers a :class:`ReportSection`; ``html.py`` only renders what the registered sections return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from babelheads.report.figures import Figure
from babelheads.runs import RunStore


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
    claims: pd.DataFrame | None = None
    """The claims table (analysis.claims.COLUMNS): each row's verdict, linked to its figure below."""


@dataclass(frozen=True)
class Page:
    """What a section may look at besides its own run: every run of the same model, and the report's
    settings."""

    runs: list[Run]
    min_samples: int


@dataclass(frozen=True)
class ReportSection:
    """kind : the kind of run drawn. languages : a run's languages (manifest config -> codes), for the
    page's table of runs. draw : the sections of one run. lead : sections drawn once per model before
    every run's own (a summary that reads several runs of the kind), or None."""

    kind: str
    languages: Callable[[RunStore, dict], list[str]]
    draw: Callable[[Run, Page], list[Section]]
    lead: Callable[[list[Run], Page], list[Section]] | None = None


SECTIONS: dict[str, ReportSection] = {}
"""Registered sections, in the order the page draws them."""


LEADS: list[Callable[[list[Run], Page], list[Section]]] = []
"""Sections drawn first for every model, before any kind's (e.g. the claims every run tested)."""


def register_lead(
    lead: Callable[[list[Run], Page], list[Section]],
) -> Callable[[list[Run], Page], list[Section]]:
    if lead not in LEADS:
        LEADS.append(lead)
    return lead


def register_section(section: ReportSection) -> ReportSection:
    if SECTIONS.get(section.kind, section) != section:
        raise ValueError(f"A report section for {section.kind!r} is already registered.")
    SECTIONS[section.kind] = section
    return section
