"""bf16-mixed against fp32, job by job: the same row, task and seed at the claims budget (issue 25).

    python benchmarks/compare_precision.py results/claims/grid results/claims/bf16

Pairs every finished bf16 job with the fp32 job of the same row, task and seed; prints the dev
metric ×100 of both, the paired difference (bf16 − fp32) with the report's 95% interval and verdict
per row (a "matches" claim: the same 1-point non-inferiority rule as the paper's claims), and the wall-time
ratio fp32/bf16 per job.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from paper.paired import interval, verdict
from paper.runs import load_summaries, row_key


def jobs(folder: Path) -> dict[tuple[str, str, int], dict]:
    return {(row_key(run), run["task"], run["seed"]): run for run in load_summaries([folder])}


def table(fp32: dict, bf16: dict) -> str:
    pairs = sorted(set(fp32) & set(bf16))
    if not pairs:
        raise SystemExit("error: no bf16 job has an fp32 job of the same row, task and seed")
    lines = ["| row | task | seed | fp32 | bf16 | bf16 − fp32 | wall fp32/bf16 |", "|---|---|---:|---:|---:|---:|---:|"]
    by_row: dict[str, list[float]] = defaultdict(list)
    for key in pairs:
        a, b = fp32[key], bf16[key]
        x, y = (100 * run["metrics"][run["main_metric"]] for run in (a, b))
        by_row[key[0]].append(y - x)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {x:.1f} | {y:.1f} | {y - x:+.1f} | {a['wall_seconds'] / b['wall_seconds']:.2f} |")
    lines += ["", "| row | pairs | mean [95% CI] | verdict (bf16 matches fp32, 1-point margin) |", "|---|---:|---|---|"]
    for row, values in sorted(by_row.items()):
        bounds = interval(values)
        ci = f"{bounds[0]:+.1f} [{bounds[1]:+.1f}, {bounds[2]:+.1f}]" if bounds else f"{statistics.mean(values):+.1f}"
        lines.append(f"| {row} | {len(values)} | {ci} | {verdict(values, 'matches')} |")
    ratios = [fp32[k]["wall_seconds"] / bf16[k]["wall_seconds"] for k in pairs]
    lines += ["", f"wall time fp32/bf16: median {statistics.median(ratios):.2f} over {len(ratios)} jobs"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path)
    parser.add_argument("bf16", type=Path)
    args = parser.parse_args(argv)
    print(table(jobs(args.fp32), jobs(args.bf16)))


if __name__ == "__main__":
    main()
