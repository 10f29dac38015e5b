"""Paired differences: each claim of the paper as (row − its reference), seed by seed.

Two rows trained with the same seed share the head's initialisation and the data order, so their
difference varies far less than either row does; comparing means of unpaired runs would drown a
one-point effect in seed noise. A claim's cell is the mean ± std over seeds of that difference
(dev main metric ×100), with how many seeds came out positive; ``Avg.`` first averages a seed's
differences over the tasks, then over the seeds that ran every task.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from sparse_adapter.runs import GLUE, TASKS, one_lr_per_row, row_key


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim, in one line
    row: str
    reference: str


CLAIMS = [
    Claim("SNIP at s=0.4 matches or beats the dense adapter", "snip", "dense"),
    Claim("SNIP beats random pruning at s=0.4", "snip", "random"),
    Claim("SNIP beats random pruning at s=0.8", "snip_s80", "random_s80"),
    Claim("SNIP at s=0.8 stays close to the dense adapter", "snip_s80", "dense"),
    Claim("Large-Sparse r=256 (s=0.75) beats the dense adapter r=64", "large_sparse4", "dense"),
    Claim("Large-Sparse r=256 matches full fine-tuning", "large_sparse4", "finetune"),
    Claim("the dense adapter comes close to full fine-tuning", "dense", "finetune"),
]


def scores(runs: list[dict]) -> dict[tuple[str, str, int], float]:
    """(row, task, seed) → dev main metric ×100, each row at its most frequent lr."""
    return {(row_key(r), r["task"], r["seed"]): 100.0 * r["metrics"][r["main_metric"]] for r in one_lr_per_row(runs)}


def differences(runs: list[dict], claim: Claim) -> dict[str, dict[int, float]]:
    """task → seed → (row − reference) for every seed where both ran."""
    by_key = scores(runs)
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for (row, task, seed), value in by_key.items():
        if row == claim.row and (claim.reference, task, seed) in by_key:
            found[task][seed] = value - by_key[(claim.reference, task, seed)]
    return found


def average_over_tasks(per_task: dict[str, dict[int, float]], tasks: list[str]) -> dict[int, float]:
    """seed → mean difference over ``tasks``, for the seeds that ran all of them."""
    seeds = set.intersection(*(set(per_task.get(t, {})) for t in tasks)) if tasks else set()
    return {seed: statistics.mean(per_task[t][seed] for t in tasks) for seed in sorted(seeds)}


def describe(values: list[float]) -> str:
    """'+1.2 ± 0.8 (2/3 > 0)': mean ± std over seeds and how many seeds favour the row."""
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):+.1f}{spread} ({sum(v > 0 for v in values)}/{len(values)} > 0)"


def paired_table(runs: list[dict]) -> str | None:
    """One line per claim with at least one pair; None when no claim has both of its rows."""
    present = {r["task"] for r in runs}
    tasks = [(t, name) for t, name in TASKS if t in present]
    glue = [t for t, _ in tasks if t in GLUE]
    lines = []
    for claim in CLAIMS:
        per_task = differences(runs, claim)
        if not per_task:
            continue
        cells = [describe(list(per_task.get(t, {}).values())) for t, _ in tasks]
        average = describe(list(average_over_tasks(per_task, glue).values()))
        lines.append(f"| {claim.text} | {claim.row} − {claim.reference} | " + " | ".join(cells) + f" | {average} |")
    if not lines:
        return None
    header = "| Claim | difference | " + " | ".join(name for _, name in tasks) + " | Avg. |"
    return "\n".join([header, "|---" * (len(tasks) + 3) + "|", *lines])
