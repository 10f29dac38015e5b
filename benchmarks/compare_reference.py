"""Our full fine-tuning beside the plain reference loop, seed by seed (issue 12: within 1.5 points on the mean).

    python benchmarks/compare_reference.py results/claims/reference

Reads the folder ``scripts/reproduce_claims.sh reference`` fills: ``plain-<task>-seed<N>.json`` from
``benchmarks/reference_finetune.py`` and our jobs' ``summary.json`` (``row=finetune``), pairs them
by task and seed, and prints a Markdown table with the mean gap. Plain JSON only: no project code.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

TOLERANCE = 1.5  # points of dev accuracy: the bar for the mean over seeds


def collect(folder: Path) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """(task, seed) → dev accuracy ×100, for the plain loop and for ours."""
    plain, ours = {}, {}
    for path in folder.glob("plain-*-seed*.json"):
        task, seed = re.fullmatch(r"plain-(\w+)-seed(\d+)\.json", path.name).groups()
        plain[(task, int(seed))] = 100 * json.loads(path.read_text())["dev_accuracy"]
    for path in folder.rglob("summary.json"):
        summary = json.loads(path.read_text())
        if summary.get("status") == "complete" and summary.get("adapter") == "none":
            ours[(summary["task"], summary["seed"])] = 100 * summary["metrics"]["accuracy"]
    return plain, ours


def table(plain: dict, ours: dict) -> str:
    pairs = sorted(set(plain) & set(ours))
    if not pairs:
        raise SystemExit("error: no seed has both a plain-<task>-seed<N>.json and one of our finished full fine-tuning runs")
    lines = ["| task | seed | plain loop | ours | ours − plain |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {task} | {seed} | {plain[(task, seed)]:.1f} | {ours[(task, seed)]:.1f} | {ours[(task, seed)] - plain[(task, seed)]:+.1f} |"
              for task, seed in pairs]
    gap = statistics.mean(ours[p] - plain[p] for p in pairs)
    lines.append(f"| mean | {len(pairs)} seeds | {statistics.mean(plain[p] for p in pairs):.1f} | "
                 f"{statistics.mean(ours[p] for p in pairs):.1f} | {gap:+.1f} |")
    within = "within" if abs(gap) <= TOLERANCE else "NOT within"
    return "\n".join(lines) + f"\n\nMean gap {gap:+.2f} points: {within} ±{TOLERANCE} of the plain loop."


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder (run `bash scripts/reproduce_claims.sh reference` first)")
    text = table(*collect(args.folder))
    print(text)
    return text


if __name__ == "__main__":
    main()
