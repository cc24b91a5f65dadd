"""What every benchmark measures the same way: peak memory of a timed block, in its own process."""

from __future__ import annotations

import threading
import time


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
