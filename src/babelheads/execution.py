"""How a run executes, as opposed to what it computes: device, batching, sharding, progress.

None of it is part of a run's identity: a run resumed with another batch size or on another worker is
the same run (batching changes results only at numerical near-ties; the benchmarks count them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from babelheads.errors import BabelheadsError
from babelheads.models import LoadedModel, load_model
from babelheads.probe import ProbeSettings
from babelheads.runner import RunSettings, Shard
from babelheads.runner.prefix import DEFAULT_MAX_SNAPSHOTS


@dataclass(frozen=True)
class Execution:
    """device : auto, cpu, cuda, cuda:N. device_map : None (the whole model on ``device``) or 'auto'
    (accelerate splits it over every GPU, then CPU). batch_size : rows decoded together (None: the
    device's default). share_prefix : prefill shared prompt prefixes once. shard : this worker's share
    of the jobs. progress : show progress bars. max_snapshots : sliding-window states kept for later
    prompts (memory: one window per sliding layer each)."""

    device: str = "auto"
    device_map: str | None = None
    batch_size: int | None = None
    share_prefix: bool = True
    shard: Shard = field(default_factory=Shard)
    progress: bool = True
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise BabelheadsError(f"--batch-size must be at least 1. Got {self.batch_size}.")
        if self.device_map not in (None, "auto"):
            raise BabelheadsError(f"--device-map takes 'auto' only. Got {self.device_map!r}.")

    def load(self, model: str, dtype: str, chat: bool | None = None) -> LoadedModel:
        return load_model(model, device=self.device, dtype=dtype, chat=chat, device_map=self.device_map)

    def run_settings(self, max_new_tokens: int, probe: ProbeSettings | None = None) -> RunSettings:
        return RunSettings(
            max_new_tokens,
            probe,
            batch_size=self.batch_size,
            share_prefix=self.share_prefix,
            shard=self.shard,
        )


DEFAULT_EXECUTION = Execution()
