"""babelheads' command line: one module per family of commands, all registered on one app."""

from __future__ import annotations

import sys

import typer

# isort: off
# Importing a module registers its commands; --help lists them in this order.
from babelheads.cli import retrieval, language, dynamic, rag, compress, general  # noqa: F401
from babelheads.cli.app import app

# isort: on
from babelheads.errors import BabelheadsError

__all__ = ["app", "main"]


def main() -> None:
    import warnings

    from babelheads.analysis.aggregate import ThinDataWarning

    # Summaries print these notes themselves, as one line each; Python's form would add source lines.
    warnings.simplefilter("ignore", ThinDataWarning)
    try:
        code = app(standalone_mode=False)  # click returns, not raises, a command's Exit here
    except BabelheadsError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted; finished samples are kept and the run resumes", err=True)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click's usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
