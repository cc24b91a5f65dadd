"""Usage errors as a user meets them: the installed console script prints click's usage line, error and
hint, exits 2, and shows no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer
from typer.core import TyperCommand

from babelheads import cli

SCRIPT = Path(sys.executable).parent / "babelheads"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "babelheads.cli"]
GROUP = typer.main.get_command(cli.app)
# click suggests a close option as "Did you mean --x?" or, in typer's copy, "(Possible options: --x, ...)".
OPTION_HINT = r"(Did you mean|Possible options:).*{}"


def misspelled(option: str) -> str:
    """``option`` less one letter: close enough for click's suggestion."""
    middle = len(option) // 2 + 1
    return option[:middle] + option[middle + 1 :]


def long_options(command: TyperCommand) -> list[str]:
    return [opt for param in command.params for opt in param.opts if opt.startswith("--")] or ["--help"]


def typo_case(name: str, command: TyperCommand) -> tuple[tuple[str, ...], str]:
    option = long_options(command)[0]
    typo = misspelled(option)
    assert typo not in long_options(command)
    return (name, typo), OPTION_HINT.format(re.escape(option))


def missing_case(name: str, command: TyperCommand) -> tuple[tuple[str, ...], str]:
    required = next(param for param in command.params if param.required)
    return (name,), rf"Missing (argument|option) '(--)?{required.name}'"


# Arguments, and the error click must print for them (the generated case wins where arguments repeat).
CASES: dict[tuple[str, ...], str] = dict(
    [
        (("detcet",), r"Did you mean 'detect'\?"),
        (("detect", "--bogus-option", "3"), r"No such option: --bogus-option"),
        (("compress", "--polices", "full"), OPTION_HINT.format("--policies")),
        (("summary",), r"Missing argument 'run'"),
        (("detect", "--lengths"), r"'--lengths' requires an argument"),
        *(typo_case(name, command) for name, command in GROUP.commands.items()),
        *(
            missing_case(name, command)
            for name, command in GROUP.commands.items()
            if any(param.required for param in command.params)
        ),
    ]
)
NO_COMMAND: tuple[str, ...] = ()


def run_script(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    # Every run pays the CLI's start-up; run them side by side rather than one after another.
    every_args = [*CASES, NO_COMMAND]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(every_args, pool.map(run_script, every_args), strict=True))


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    ("args", "error"), [pytest.param(args, error, id=" ".join(args)) for args, error in CASES.items()]
)
def test_a_usage_error_prints_the_usage_line_and_error_and_exits_2(
    results, args: tuple[str, ...], error: str
) -> None:
    result = results[args]
    assert_no_traceback(result)
    usage = (
        f"Usage: babelheads {args[0]} "
        if args[0] in GROUP.commands
        else "Usage: babelheads [OPTIONS] COMMAND"
    )
    assert usage in result.stderr, result.stderr
    assert re.search(rf"Error: .*{error}", result.stderr), result.stderr


def test_no_command_prints_the_help_and_exits_2(results) -> None:
    result = results[tuple(NO_COMMAND)]
    assert_no_traceback(result)
    assert "Usage: babelheads" in result.stdout + result.stderr


def raising_app(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def work() -> None:
        raise error

    return app


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), EOFError(), typer.Abort()], ids=lambda error: type(error).__name__
)
def test_an_interrupt_says_the_run_resumes_and_exits_130(monkeypatch, capsys, error: BaseException) -> None:
    # typer >= 0.26 hands a Ctrl-C back as exit code 130 and an end of input as typer.Abort.
    monkeypatch.setattr(cli, "app", raising_app(error))
    monkeypatch.setattr(sys, "argv", ["babelheads"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130
    assert "interrupted; finished samples are kept and the run resumes" in capsys.readouterr().err
