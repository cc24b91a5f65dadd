"""Options shared by the commands: number lists, --config/--from, and how a run executes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.errors import BabelheadsError


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
BatchSize = Annotated[
    int | None,
    typer.Option(help="Rows decoded together; default 8 on CPU, on a GPU up to 16 as memory allows."),
]
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
ShardOption = Annotated[
    str, typer.Option(help="I/N: run the I-th of N blocks of samples (workers sharing one run directory).")
]


def _execution(
    device: str,
    quiet: bool,
    batch_size: int | None = None,
    share_prefix: bool = True,
    device_map: str | None = None,
    shard: str = "0/1",
):
    from babelheads.execution import Execution
    from babelheads.runner import Shard

    return Execution(
        device=device,
        device_map=device_map,
        batch_size=batch_size,
        share_prefix=share_prefix,
        shard=Shard.parse(shard),
        progress=not quiet,
    )


def _all_finished(store, execution) -> bool:
    """A shard's worker reports its share; the summary waits for the run's last sample."""
    if execution.shard.count == 1:
        return True
    if (store.root / "scores.parquet").exists() or (store.root / "ablation.parquet").exists():
        return True
    typer.echo(
        f"shard {execution.shard} done: {len(store.finished())} samples of the run finished in "
        f"{store.root}. The worker that finishes the last sample writes the run's tables "
        "(or run again without --shard)."
    )
    return False
