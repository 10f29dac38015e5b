"""Wall time of ``python train.py --help`` and ``python train.py --cfg job``, two source trees interleaved.

    /work/bin/grid-pause; trap /work/bin/grid-resume EXIT
    python benchmarks/cli_startup.py --before /tmp/base-checkout --after . --runs 5

Each command runs in a fresh interpreter with its tree first on PYTHONPATH (so the tree's own
``sparse_adapter``/``tasks`` are imported, not an installed copy); the trees alternate run by run so
that load on the machine falls on both alike. Prints the median and the spread of each, and the ratio.
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

COMMANDS = {"--help": ["--help"], "--cfg job": ["--cfg", "job"]}


def once(tree: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "train.py", *args], cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{tree}: train.py {' '.join(args)} failed: {result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--extra", action="append", default=[], help="label=path: another tree timed alongside")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    trees = {"before": options.before.resolve(), "after": options.after.resolve()}
    trees.update({label: Path(path).resolve() for label, path in (e.split("=", 1) for e in options.extra)})
    times: dict[str, dict[str, list[float]]] = {name: {label: [] for label in trees} for name in COMMANDS}
    for name, args in COMMANDS.items():
        once(trees["after"], args)  # warm the file cache once
        for _ in range(options.runs):
            for label, tree in trees.items():
                times[name][label].append(once(tree, args))
    report = {}
    for name, by_tree in times.items():
        medians = {label: statistics.median(values) for label, values in by_tree.items()}
        report[name] = {"median_s": medians, "runs_s": by_tree, "after/before": medians["after"] / medians["before"]}
        shown = ", ".join(f"{label} {median:.2f} s ({median / medians['before']:.2f}x)" for label, median in medians.items())
        print(f"train.py {name}: {shown}; median of {options.runs} runs each")
    if options.out:
        options.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
