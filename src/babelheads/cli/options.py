"""Options shared by the commands: number lists, --config/--from, and how a run executes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from babelheads.errors import BabelheadsError

if TYPE_CHECKING:  # both load torch or pandas; the CLI imports them when a command runs
    from babelheads.execution import Execution
    from babelheads.runs import RunStore


def _codes(text: str) -> tuple[str, ...]:
    """Comma-separated codes (languages, selections), blanks dropped."""
    return tuple(code.strip() for code in text.split(",") if code.strip())


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BabelheadsError(
            f"--{name} must be comma-separated integers, e.g. 1000,2000. Got {text!r}."
        ) from None


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BabelheadsError(
            f"--{name} must be comma-separated numbers, e.g. 0,0.5,1. Got {text!r}."
        ) from None


def _settings_callback(source: str):
    """An eager option that fills the command's defaults from a file or a run; flags still win."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
        if value is None or ctx.resilient_parsing:
            return value
        from babelheads.settings_files import read_settings_file, replay_run

        fields = {p.name for p in ctx.command.params if p.expose_value}
        read = read_settings_file if source == "config" else replay_run
        ctx.meta[source] = read(value, ctx.command.name, fields)
        ctx.default_map = {
            **(ctx.default_map or {}),
            **ctx.meta.get("from", {}),
            **ctx.meta.get("config", {}),
        }
        return value

    return callback


def _settings_option(source: str, help: str):
    """An eager ``--config``/``--from`` option that only fills defaults (the command never sees it)."""
    flag = "--" + source
    return Annotated[
        Path | None,
        typer.Option(flag, help=help, callback=_settings_callback(source), is_eager=True, expose_value=False),
    ]


ConfigFile = _settings_option(
    "config", "TOML or YAML file with the same fields as the flags (flags given here win)."
)
FromRun = _settings_option(
    "from", "Replay an existing run's settings (its manifest); flags given here change them."
)
# One definition per option, so every command spells and documents it the same; each command passes
# its own default in its signature.
Model = Annotated[str, typer.Option(help="Built-in name, hub id, model directory or .gguf file.")]
HeadsModel = Annotated[
    str | None,
    typer.Option(
        help="Built-in name, hub id, model directory or .gguf file; default: the heads run's model."
    ),
]
Languages = Annotated[str, typer.Option(help="Comma-separated language codes.")]
TestedLanguages = Annotated[
    str,
    typer.Option(help="Comma-separated language codes to test; default: the run's whose heads are tested."),
]
Out = Annotated[Path, typer.Option(help="Run directory (resumes if it holds the same run).")]
Seed = Annotated[int, typer.Option(help="Seed of what the command draws (samples, random heads, bootstrap).")]
HeldOutSeed = Annotated[
    int,
    typer.Option(
        help="Seed of the haystacks: another than the heads run's, so no head is tested where chosen."
    ),
]
Replicates = Annotated[int, typer.Option(help="Bootstrap replicates.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Rows computed together (prompts decoded, texts per pass); default: what the device suits "
        "(more on a GPU, as memory allows)."
    ),
]
Shard = Annotated[
    str, typer.Option(help="I/N: run the I-th of N blocks of the run's parts (workers sharing one --out).")
]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
SharePrefix = Annotated[
    bool, typer.Option(help="Prefill prompts' shared token prefixes once (off: each prompt alone).")
]
DeviceMap = Annotated[
    str | None, typer.Option(help="'auto': split a model too large for one GPU over all GPUs (accelerate).")
]
HeadMask = Annotated[
    Path | None,
    typer.Option(help="A head-mask file (babelheads adapt writes one) scaling each head in every pass."),
]


def _execution(
    device: str,
    quiet: bool,
    *,
    batch_size: int | None = None,
    shard: str = "0/1",
    share_prefix: bool = True,
    device_map: str | None = None,
) -> Execution:
    from babelheads import runner
    from babelheads.execution import Execution

    return Execution(
        device=device,
        device_map=device_map,
        batch_size=batch_size,
        share_prefix=share_prefix,
        shard=runner.Shard.parse(shard),
        progress=not quiet,
    )


def report_run(
    store: RunStore, execution: Execution, summary: Callable[[RunStore], str], written: str = "run written to"
) -> bool:
    """The run's summary once its tables are written (a finished run's last step); whether it was. A
    shard's worker whose run has parts left reports its share: the worker that finishes the last part
    writes them."""
    from babelheads.kinds import FINALIZED

    if not (store.root / FINALIZED).exists():
        parts, finished = store.recorded_parts(), store.finished()
        total = "" if parts is None else f" of {len(parts)}"
        typer.echo(
            f"shard {execution.shard} done: {len(finished)}{total} parts of the run finished in "
            f"{store.root}. "
            "The worker that finishes the last part writes the run's tables (or run again without --shard)."
        )
        return False
    typer.echo(summary(store))
    typer.echo(f"\n{written} {store.root}")
    return True
