"""babelheads' command line: one module per family of commands, all registered on one app."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

# isort: off
# Importing a module registers its commands; --help lists them in this order.
from babelheads.cli import retrieval, language, dynamic, rag, compress, general  # noqa: F401
from babelheads.cli.app import app

# isort: on
from babelheads.errors import BabelheadsError

# typer >= 0.26 vendors click as typer._click and raises that copy's exceptions, which click's own
# ClickException does not match; older typer (the pin allows >= 0.12) raises click's.
try:
    from typer._click.core import Context
    from typer._click.exceptions import ClickException, UsageError
except ImportError:
    from click.core import Context
    from click.exceptions import ClickException, UsageError

__all__ = ["app", "main"]

# Usage lines name the console script, also when run as `python -m babelheads.cli`, so that the usage line
# of an error click raises without a context (see usage_context) reads the same as the others.
PROG = "babelheads"
# typer >= 0.26 turns a Ctrl-C inside a command into this exit code and returns it; older typer raised Abort.
INTERRUPTED = 130


def main() -> None:
    import warnings

    from babelheads.errors import ThinDataWarning

    # Summaries print these notes themselves, as one line each; Python's form would add source lines.
    warnings.simplefilter("ignore", ThinDataWarning)
    # The others (a run resumed under other package versions, ...) as one line each, without the
    # source line Python's form adds.
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        code = app(prog_name=PROG, standalone_mode=False)  # click returns, not raises, a command's Exit here
    except BabelheadsError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        interrupted()
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except ClickException as error:
        show_usage_error(error)
    if code == INTERRUPTED:
        interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


def interrupted() -> NoReturn:
    typer.echo("interrupted; finished samples are kept and the run resumes", err=True)
    sys.exit(INTERRUPTED)


def show_usage_error(error: ClickException) -> NoReturn:
    """Print click's usage line, error and hint, and exit with its code (2 for a usage error)."""
    if isinstance(error, UsageError) and error.ctx is None:
        # click raises an option's missing value (or a value given to a flag) without a context,
        # and show() prints a usage line only from one.
        error.ctx = usage_context(sys.argv[1:])
    error.show()
    sys.exit(error.exit_code)


def usage_context(args: list[str]) -> Context:
    """A context, unparsed, for the command ``args`` names, or for the app where it names none."""
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name=PROG)
    command = group.get_command(root, args[0]) if args else None
    return root if command is None else command.context_class(command, info_name=args[0], parent=root)
