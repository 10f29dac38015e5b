"""Start-up cost of `import sparse_adapter` against `import torch` alone: one fresh process per sample,
the variants interleaved, the median wall time of each, and `-X importtime`'s total for the package.

    python benchmarks/import_time.py --checkout /path/to/old --checkout . --repeats 7 \
        --out benchmarks/results/import_time.json

Each ``--checkout`` is put first on PYTHONPATH, so two trees (before / after a change) compare on one
interpreter and one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEUTRAL = "/"  # `-c` puts the working directory first on sys.path: run where no sparse_adapter/ lies


def wall(code: str, path: str | None) -> float:
    env = dict(os.environ, PYTHONPATH=path or "")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, cwd=NEUTRAL)
    return time.perf_counter() - start


def importtime(path: str) -> tuple[float, float]:
    """(seconds `-X importtime` charges to the top-level `sparse_adapter` import, torch included; the part of
    them that is not torch's): one process, so the second number is free of the machine's drift."""
    env = dict(os.environ, PYTHONPATH=path)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sparse_adapter"], check=True, env=env,
                         capture_output=True, text=True, cwd=NEUTRAL).stderr
    cumulative = {line.split("|")[2].strip(): int(line.split("|")[1]) / 1e6 for line in err.splitlines()
                  if line.startswith("import time:") and line.split("|")[1].strip().isdigit()}
    return cumulative["sparse_adapter"], cumulative["sparse_adapter"] - cumulative["torch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", required=True, help="a source tree holding sparse_adapter/")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkouts = [str(Path(c).resolve()) for c in args.checkout]
    samples: dict[str, list[float]] = {"import torch": []} | {f"import sparse_adapter ({c})": [] for c in checkouts}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every variant alike
        samples["import torch"].append(wall("import torch", None))
        for c in checkouts:
            samples[f"import sparse_adapter ({c})"].append(wall("import sparse_adapter", c))
    torch_alone = statistics.median(samples["import torch"])
    result = {"python": sys.version.split()[0], "repeats": args.repeats, "torch_median_s": round(torch_alone, 3),
              "checkouts": {}}
    for c in checkouts:
        median = statistics.median(samples[f"import sparse_adapter ({c})"])
        total, beyond_torch = importtime(c)
        result["checkouts"][c] = {"median_s": round(median, 3), "over_torch_s": round(median - torch_alone, 3),
                                  "importtime_s": round(total, 3), "importtime_beyond_torch_s": round(beyond_torch, 3),
                                  "samples_s": [round(s, 3) for s in samples[f"import sparse_adapter ({c})"]]}
    result["torch_samples_s"] = [round(s, 3) for s in samples["import torch"]]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
