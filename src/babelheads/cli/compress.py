"""Head-guided KV-cache compression: bytes against NIAH accuracy per policy and language."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.cli.app import app
from babelheads.cli.options import (
    BatchSize,
    ConfigFile,
    Device,
    Dtype,
    FromRun,
    HeadsModel,
    HeldOutSeed,
    Languages,
    Out,
    Quiet,
    Replicates,
    Shard,
    _codes,
    _execution,
    _floats,
    _ints,
    report_run,
)
from babelheads.kvcache.names import POLICIES


@app.command("compress")
def compress_command(
    heads: Annotated[
        Path, typer.Option(help='A detect, dynamic or importance run, or a score file {"L-H": score}.')
    ],
    model: HeadsModel = None,
    languages: Languages = "en,de,zh",
    head_sets: Annotated[
        str,
        typer.Option(
            help="Whose heads: languages of the heads run, union, intersection (default: the "
            "NIAH languages it has, plus union: the cross-lingual matrix)."
        ),
    ] = "",
    policies: Annotated[
        str, typer.Option(help=f"Some of {','.join(POLICIES)} (full is always run).")
    ] = ",".join(POLICIES),
    shares: Annotated[
        str, typer.Option(help="Shares of KV heads (in full-attention layers) kept whole, one budget each.")
    ] = "0.25,0.5",
    sink: Annotated[int, typer.Option(help="Sink positions every compressed head keeps.")] = 64,
    window: Annotated[int, typer.Option(help="Recent positions a streaming head keeps.")] = 256,
    kv_mapping: Annotated[str, typer.Option(help="Query-head scores to KV heads: max or mean.")] = "max",
    floor: Annotated[float, typer.Option(help="head-budget: least budget as a share of the mean.")] = 0.2,
    token_rule: Annotated[str, typer.Option(help="head-budget: recent or key-norm.")] = "recent",
    random_seeds: Annotated[
        int,
        typer.Option(help="Random head sets per head set (the claims compare head-split with their spread)."),
    ] = 4,
    needles: Annotated[
        str, typer.Option(help="'builtin' (short answers: each policy decodes a few steps), 'magic', a file.")
    ] = "builtin",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens.")] = "2000",
    depths: Annotated[str, typer.Option(help="Needle depths in [0, 1].")] = "0.25,0.5,0.75",
    needles_per_cell: Annotated[int, typer.Option()] = 2,
    max_new_tokens: Annotated[int, typer.Option()] = 24,
    replicates: Replicates = 1000,
    control: Annotated[
        bool,
        typer.Option(
            help="Negative control: every head set's scores replaced by random ones (must not hold)."
        ),
    ] = False,
    out: Out = Path("runs/compress"),
    seed: HeldOutSeed = 1,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Compress the KV cache of each NIAH context by policy (the heads of a head set keep everything,
    the rest sink + window; a uniform window and random heads at equal bytes; a per-head budget) and
    measure bytes against accuracy, per language and head set."""
    from babelheads.experiments.compress import CompressConfig, compress
    from babelheads.kvcache.policies import PolicySettings
    from babelheads.report.compress_text import compress_summary
    from babelheads.tasks.niah import NiahSettings

    config = CompressConfig(
        heads=str(heads),
        model=model,
        niah=NiahSettings(
            languages=_codes(languages),
            needles=needles,
            lengths=_ints(lengths, "lengths"),
            depths=_floats(depths, "depths"),
            needles_per_cell=needles_per_cell,
            seed=seed,
        ),
        policies=tuple(dict.fromkeys(("full", *_codes(policies)))),
        head_sets=_codes(head_sets),
        shares=_floats(shares, "shares"),
        settings=PolicySettings(sink, window, kv_mapping, floor, token_rule),
        random_seeds=random_seeds,
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        replicates=replicates,
        control=control,
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = compress(config, out, execution)
    report_run(store, execution, compress_summary)
