"""A run directory: a manifest and Parquet tables written sample by sample, so runs resume.

Layout::

    RUN/manifest.json              spec (config, model identity), environment, seed, facts (head layout)
    RUN/tables/<table>/<sample>.parquet   one file per finished sample and table
    RUN/<name>.parquet, RUN/csv/<name>.csv, RUN/retrieval_scores.<lang>.json   derived, rewritten

Each part is written to a temporary name and renamed, and the samples part is written last: a sample
counts as finished only when its samples part exists, so ``kill -9`` loses at most the sample in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from babelheads.errors import RunStoreError

MANIFEST = "manifest.json"
TABLES = "tables"
COMMIT_TABLE = "samples"
PACKAGES = ("babelheads", "torch", "transformers", "numpy", "pandas", "pyarrow", "gguf")


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class RunStore:
    """Reads and writes one run directory. ``spec`` is what makes two runs comparable: the kind of run,
    its config and the model identity; the environment is recorded, never required to match (resuming
    under other versions only warns: see :func:`warn_if_versions_differ`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict:
        if not self.exists():
            raise RunStoreError(f"{self.root} is not a babelheads run (no {MANIFEST}). Check the path.")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            raise RunStoreError(
                f"{self.manifest_path} is corrupted ({error}). Restore it or start a new run."
            ) from error
        check_manifest(manifest, self.manifest_path)
        return manifest

    def check_compatible(self, spec: dict, ignore: tuple[str, ...] = (), loose: tuple[str, ...] = ()) -> None:
        """Refuse to mix: an existing run must have been made with exactly this spec (the top-level
        entries in ``ignore`` aside, e.g. the model identity before the model is loaded; and the config
        fields in ``loose``, analysis settings that older versions still recorded as identity)."""
        if self.root.exists() and not self.root.is_dir():
            raise RunStoreError(f"{self.root} is a file, not a run directory. Choose another --out.")
        if not self.exists():
            if self.root.exists() and any(self.root.iterdir()):
                raise RunStoreError(
                    f"{self.root} exists, is not empty and holds no babelheads run. Choose another --out."
                )
            return
        existing = {key: value for key, value in self.manifest()["spec"].items() if key not in ignore}
        spec = {key: value for key, value in _as_json(spec).items() if key not in ignore}
        if existing.get("kind") != spec.get("kind"):
            raise RunStoreError(
                f"{self.root} holds a {existing.get('kind')} run, not a {spec.get('kind')} run. "
                "Use another --out."
            )
        if isinstance(existing.get("config"), dict):
            existing["config"] = {k: v for k, v in existing["config"].items() if k not in loose}
        if existing != spec:
            changed = sorted(_differences(existing, spec))
            raise RunStoreError(
                f"{self.root} holds a run made with a different {', '.join(changed[:4])}. "
                "Use another --out, or delete that run to start over."
            )

    def recorded_parts(self) -> list[str] | None:
        """The parts the run was created with (None: a run of a version that did not record them)."""
        manifest = self.manifest()
        if "parts" in manifest:
            return list(manifest["parts"])
        if "windows" in manifest:  # importance runs before the experiment contract
            return list(manifest["windows"])
        legacy = self.root / "parts.json"  # language-test runs before the experiment contract
        return list(json.loads(legacy.read_text())) if legacy.is_file() else None

    def create(self, spec: dict, seed: int, facts: dict | None = None) -> None:
        """Write the manifest. ``facts`` are recorded, never compared (e.g. the model's head layout)."""
        if self.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "spec": _as_json(spec),
            "spec_digest": spec_digest(spec),
            "seed": seed,
            **_as_json(facts or {}),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "environment": environment(),
        }
        _atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2).encode())

    def finished(self) -> set[str]:
        directory = self.root / TABLES / COMMIT_TABLE
        if not directory.exists():
            return set()
        return {path.stem for path in directory.glob("*.parquet")}

    def append(self, sample_id: str, tables: dict[str, pd.DataFrame]) -> None:
        """Write one sample's rows of every table; the samples table last, as the commit."""
        if COMMIT_TABLE not in tables:
            raise ValueError(f"append() needs a {COMMIT_TABLE!r} table.")
        order = [name for name in tables if name != COMMIT_TABLE] + [COMMIT_TABLE]
        for name in order:
            path = self.root / TABLES / name / f"{sample_id}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(tables[name], preserve_index=False)
            temporary = path.with_suffix(".parquet.tmp")
            pq.write_table(table, temporary)
            os.replace(temporary, path)

    def copy_part(self, source: RunStore, sample_id: str) -> None:
        """Copy one finished sample's rows of every table from ``source``; the samples table last, as
        the commit."""
        names = sorted(path.parent.name for path in (source.root / TABLES).glob(f"*/{sample_id}.parquet"))
        for name in [name for name in names if name != COMMIT_TABLE] + [COMMIT_TABLE]:
            path = self.root / TABLES / name / f"{sample_id}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".parquet.tmp")
            shutil.copyfile(source.root / TABLES / name / f"{sample_id}.parquet", temporary)
            os.replace(temporary, path)

    def table(self, name: str) -> pd.DataFrame:
        """All finished samples' rows of ``name``, sorted by sample id (so resumed equals uninterrupted)."""
        finished = self.finished()
        directory = self.root / TABLES / name
        frames = []
        for sample_id in sorted(finished):
            path = directory / f"{sample_id}.parquet"
            if not path.exists() and name != COMMIT_TABLE and self._skipped(sample_id):
                continue
            if not path.exists():
                raise RunStoreError(
                    f"{path} is missing although its sample finished. Delete "
                    f"{self.root / TABLES / COMMIT_TABLE / (sample_id + '.parquet')} to redo it."
                )
            frames.append(
                read_parquet(path, hint=f"delete it and the sample's other parts to redo {sample_id}")
            )
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def _skipped(self, sample_id: str) -> bool:
        """A sample recorded as skipped has a samples part and nothing else."""
        path = self.root / TABLES / COMMIT_TABLE / f"{sample_id}.parquet"
        frame = read_parquet(path, hint=f"delete it to redo {sample_id}")
        return "status" in frame and bool((frame["status"] == "skipped").all())

    def validate(self) -> None:
        """Read every finished part once; fail on the first damaged one, naming the file and the fix."""
        finished = self.finished()
        for path in sorted((self.root / TABLES).glob("*/*.parquet")):
            if path.stem in finished:
                read_parquet(
                    path, hint=f"delete it and tables/{COMMIT_TABLE}/{path.name} to redo that sample"
                )

    def write_derived(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.root / f"{name}.parquet"
        temporary = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temporary)
        os.replace(temporary, path)
        return path

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        """A derived table as Parquet (for the tools) and CSV (for people), under one name."""
        path = self.write_derived(name, frame)
        self.write_csv(name, frame)
        return path

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.root / "csv" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".csv.tmp")
        frame.to_csv(temporary, index=False)
        os.replace(temporary, path)
        return path

    def write_json(self, name: str, data: object) -> Path:
        path = self.root / name
        _atomic_write_bytes(path, json.dumps(data, indent=1, ensure_ascii=False).encode())
        return path

    def read_json(self, name: str) -> object:
        path = self.root / name
        if not path.exists():
            raise RunStoreError(f"{self.root} has no {name} yet. Finish the run (run its command again).")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunStoreError(
                f"{path} is corrupted ({error}). Run the command again to rewrite it."
            ) from error

    def has_derived(self, name: str) -> bool:
        return (self.root / f"{name}.parquet").exists()

    def derived(self, name: str) -> pd.DataFrame:
        path = self.root / f"{name}.parquet"
        if not path.exists():
            raise RunStoreError(f"{self.root} has no {name} table yet. Finish the run (run detect again).")
        return read_parquet(path, hint="run the same detect command again to rewrite it")


def check_manifest(manifest: object, path: Path) -> None:
    """Every reader indexes ``manifest["spec"]["kind"]``; a manifest without them (edited by hand, or
    written by something else) is refused here in one line instead of a KeyError deep in a command."""
    spec = manifest.get("spec") if isinstance(manifest, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise RunStoreError(
            f"{path} is not a babelheads run manifest: it needs a 'spec' object with a 'kind'. "
            "Restore it from a backup or start a new run."
        )


def read_parquet(path: Path, hint: str) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise RunStoreError(f"{path} is corrupted ({str(error).splitlines()[0]}); {hint}.") from error


def environment() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": sys.version.split()[0], "packages": versions, "git_commit": _git_commit()}


# Named in a version warning even when they match: what a reader compares numbers across first.
CONTEXT_PACKAGES = ("transformers", "torch")


def version_differences(recorded: object, current: dict | None = None) -> list[tuple[str, str, str]]:
    """(name, recorded version, current version) of python and each package whose version differs
    between a manifest's ``environment`` and this one's (``current``: :func:`environment`). An entry
    missing on either side (a manifest of an older version, a package not installed) is no difference;
    the git commit is not compared."""
    if not isinstance(recorded, dict):
        return []
    current = environment() if current is None else current
    old = {"python": recorded.get("python"), **_packages(recorded)}
    new = {"python": current.get("python"), **_packages(current)}
    return [
        (name, str(old[name]), str(new[name]))
        for name in old
        if old[name] is not None and new.get(name) is not None and old[name] != new[name]
    ]


def warn_if_versions_differ(store: RunStore, current: dict | None = None) -> bool:
    """Warn once (a UserWarning) when the existing run in ``store`` was written with other versions than
    this environment's: a resumed run mixes parts of both. Returns whether it warned."""
    manifest = store.manifest()
    recorded = manifest.get("environment")
    differing = version_differences(recorded, current)
    if not differing:
        return False
    packages = _packages(recorded)
    names = [name for name, _, _ in differing]
    context = [name for name in CONTEXT_PACKAGES if name not in names and packages.get(name) is not None]
    old_versions = {name: old for name, old, _ in differing} | {name: str(packages[name]) for name in context}
    written = ", ".join(f"{name} {old_versions[name]}" for name in names + context)
    now = ", ".join(f"{name} {new}" for name, _, new in differing)
    warnings.warn(
        f"{store.root} was written with {written}; now {now}: results may differ at numerical "
        "near-ties; rerun into a new --out to compare.",
        UserWarning,
        stacklevel=2,
    )
    return True


def _packages(environment_: dict) -> dict:
    packages = environment_.get("packages")
    return dict(packages) if isinstance(packages, dict) else {}


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def _as_json(data: dict) -> dict:
    """What the manifest will hold once read back (tuples become lists)."""
    return json.loads(json.dumps(data))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
