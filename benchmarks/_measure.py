"""What every benchmark measures the same way: peak memory of a timed block, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PeakMemory:
    """Samples the resident set every few milliseconds while the block runs (or reads CUDA's counter)."""

    def __init__(self, device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self.peak = _rss_bytes()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_bytes())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def run_worker(command: list[str], result: Path, name: str) -> dict:
    """Run one benchmark side in its own process; its JSON result, or exit naming the side."""
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        sys.exit(f"worker {name} failed:\n{finished.stderr[-3000:]}")
    return json.loads(result.read_text())


def add_common_arguments(parser, new_tokens: int) -> None:
    """The options every side-by-side benchmark takes, and the hidden ones its workers read."""
    import argparse

    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch; default: the device's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--result", help=argparse.SUPPRESS)
