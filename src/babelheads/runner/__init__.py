"""The one runner: every experiment decodes through :func:`run_jobs` (or :func:`greedy_decode` for one
prompt); no other module has a decode loop.

stops : when an answer ends. prefix : prefilling shared token prefixes once. cache : fresh caches and
left-padded batches of them. decode : the batched greedy loop with the instrument. jobs : grouping,
ordering and batching jobs, and the tables each writes to a run.
"""

from babelheads.runner.cache import cache_argument
from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Decoded, Row, decode_rows, greedy_decode
from babelheads.runner.jobs import Job, RunSettings, run_jobs
from babelheads.runner.parts import Shard
from babelheads.runner.prefix import SharedPrefill
from babelheads.runner.stops import StopRule

__all__ = [
    "DEFAULT_PREFILL_CHUNK",
    "Decoded",
    "Job",
    "Row",
    "RunSettings",
    "Shard",
    "SharedPrefill",
    "StopRule",
    "cache_argument",
    "decode_rows",
    "greedy_decode",
    "run_jobs",
]
