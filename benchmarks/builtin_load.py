"""Loading a built-in: the cached de-quantized copy against converting its GGUF, in one run.

    python benchmarks/builtin_load.py [--model gemma-3-270m]

Each load runs in a fresh process (imports excluded from the timed part). The last line reads
``cached_load_s=S gguf_load_s=G ratio=R``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKER = """
import sys, time
from babelheads.models import BUILTINS, load_model
name, mode = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "cached":
    load_model(name, device="cpu")
else:
    load_model(str(BUILTINS[name].locate_gguf()), device="cpu")
print(time.perf_counter() - start)
"""


def timed(model: str, mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, model, mode], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    timed(args.model, "cached")  # makes sure the cache exists and the files are in the page cache
    cached = min(timed(args.model, "cached") for _ in range(2))
    gguf = timed(args.model, "gguf")
    print(f"cached_load_s={cached:.1f} gguf_load_s={gguf:.1f} ratio={cached / gguf:.2f}")


if __name__ == "__main__":
    main()
