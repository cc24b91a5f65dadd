"""Many runs on Ray: each job of a sweep file is one ordinary command writing one ordinary run directory.

A job runs the babelheads command line in its own process on a Ray worker, so a job that fails (a bad
setting, a model that does not load, a killed worker) fails alone: the sweep reports it by its one
error line and the others go on. Runs resume, so running the sweep again redoes only what is missing.
``shards = N`` splits one job's samples over N workers writing the same run directory (``--shard I/N``).

A sweep file (TOML or YAML) holds a list of jobs, each a command and its flags by name::

    [[job]]
    command = "detect"
    out = "runs/sweep/gemma-en-de"
    model = "gemma-3-270m"
    languages = ["en", "de"]
    shards = 2
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from babelheads.errors import BabelheadsError
from babelheads.kinds import sweepable_commands
from babelheads.settings_files import read_table_file


@dataclass(frozen=True)
class SweepJob:
    """One command of a sweep (one shard of it when ``shard`` is set)."""

    name: str
    command: str
    out: str
    flags: tuple[tuple[str, object], ...]
    shard: str | None = None

    def arguments(self) -> list[str]:
        args = [self.command, "--out", self.out, "--quiet"]
        for key, value in self.flags:
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            elif isinstance(value, list | tuple):
                args += [flag, ",".join(str(item) for item in value)]
            else:
                args += [flag, str(value)]
        if self.shard:
            args += ["--shard", self.shard]
        return args


@dataclass(frozen=True)
class JobResult:
    name: str
    out: str
    ok: bool
    message: str
    seconds: float


def read_sweep(path: Path) -> list[SweepJob]:
    """The jobs of a sweep file, one per shard."""
    data = read_table_file(path, "Sweep file")
    entries = data.get("job") or data.get("jobs")
    if not isinstance(entries, list) or not entries:
        raise BabelheadsError(
            f"Sweep file {path} lists no jobs. Add [[job]] tables with a command and an out."
        )
    jobs: list[SweepJob] = []
    outs: set[str] = set()
    for index, entry in enumerate(entries):
        entry = dict(entry)
        command, out = entry.pop("command", None), entry.pop("out", None)
        commands = sweepable_commands()
        if command not in commands or not out:
            raise BabelheadsError(
                f"Sweep file {path}, job {index + 1}: give command ({' or '.join(commands)}) and out."
            )
        if str(out) in outs:
            raise BabelheadsError(f"Sweep file {path}: two jobs write {out}. Give each job its own out.")
        outs.add(str(out))
        shards = int(entry.pop("shards", 1))
        name = str(entry.pop("name", Path(str(out)).name))
        flags = tuple(sorted(entry.items()))
        if shards < 1:
            raise BabelheadsError(f"Sweep file {path}, job {name}: shards must be at least 1.")
        for shard in range(shards):
            label = f"{name}[{shard}/{shards}]" if shards > 1 else name
            jobs.append(
                SweepJob(label, command, str(out), flags, f"{shard}/{shards}" if shards > 1 else None)
            )
    return jobs


def run_command(arguments: list[str]) -> tuple[int, str]:
    """Run one babelheads command in a fresh process; its exit status and its last line of output."""
    finished = subprocess.run(
        [sys.executable, "-m", "babelheads.cli", *arguments], capture_output=True, text=True, check=False
    )
    lines = [line for line in (finished.stderr + finished.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return finished.returncode, (errors or lines or [""])[-1]


def run_sweep(
    jobs: list[SweepJob],
    address: str | None = None,
    workers: int | None = None,
    cpus_per_job: float = 1.0,
    gpus_per_job: float = 0.0,
    say: Callable[[str], None] = print,
) -> list[JobResult]:
    """Run every job on Ray (a local Ray with ``workers`` CPUs unless ``address`` names a cluster)."""
    try:
        import ray
    except ImportError:
        raise BabelheadsError("Sweeps run on Ray. Install it: pip install 'babelheads[sweep]'.") from None
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BabelheadsError(f"Ray did not start: {str(error).splitlines()[0]}") from None
    try:
        remote = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(_timed_command)
        pending = {remote.remote(job.arguments()): job for job in jobs}
        results: list[JobResult] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                code, message, seconds = ray.get(done[0])
            except Exception as error:  # the worker died (killed, out of memory)
                code, message, seconds = 1, f"worker lost: {str(error).splitlines()[0]}", float("nan")
            result = JobResult(job.name, job.out, code == 0, message, seconds)
            results.append(result)
            say(f"{'done  ' if result.ok else 'FAILED'} {job.name}: {message}")
        return sorted(results, key=lambda result: result.name)
    finally:
        ray.shutdown()


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Fail in seconds, with one line, where Ray would retry an unreachable head for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except (OSError, ValueError):
        raise BabelheadsError(
            f"No Ray cluster answers at {address}. Check --address (host:port or ray://host:10001), or "
            "leave it out to run on a local Ray."
        ) from None


def _timed_command(arguments: list[str]) -> tuple[int, str, float]:
    start = time.perf_counter()
    code, message = run_command(arguments)
    return code, message, time.perf_counter() - start
