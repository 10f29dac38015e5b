"""Paired differences: each claim of the paper as (row − its reference), seed by seed, with a verdict.

Two rows trained with the same seed share the head's initialisation and the data order, so their
difference varies far less than either row does; comparing means of unpaired runs would drown a
one-point effect in seed noise. A claim's cell is the mean ± std over seeds of that difference
(dev main metric ×100), with how many seeds came out positive; ``Avg.`` first averages a seed's
differences over the tasks, then over the seeds that ran every task.

The verdict reads every (task, seed) pair of a claim as one replicate: the 95% paired t-interval
of their mean difference decides it. A claim that the row *beats* its reference is reproduced when
the interval lies above 0, not reproduced when it lies below, within noise otherwise. A claim
that the row *matches* its reference (is no worse) is a non-inferiority claim with a margin of
``MARGIN`` points: reproduced when the interval lies above −MARGIN, not reproduced when it lies
below, within noise otherwise (a mean ≥ 0 alone proves nothing when the interval is wide). Tasks
differ in spread, so pooling them widens the interval: the rule errs towards "within noise".
``per_task_table`` applies the same rule to each task's seeds alone, so one task that moves shows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from sparse_adapter.paper import PAPER_BERT_AVG, PAPER_ROBERTA_AVG_TABLE2
from sparse_adapter.runs import GLUE, TASKS, learning_curve, one_lr_per_row, row_key

MARGIN = 1.0  # points of dev metric ×100: what "matches" may lose (non-inferiority margin), fixed before the grid's other rows ran
EARLY = 0.5  # "converges faster": the mean dev metric over the evaluations in this first fraction of training


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim, in one line
    row: str
    reference: str
    kind: str = "beats"  # or "matches": the row is no worse than the reference
    measure: str = "final"  # or "early": mean dev metric over the first EARLY of training (needs quarter-epoch evals)
    paper: str | None = None  # which of the paper's GLUE averages hold both rows: "BERT" (Tables 1, 3) or "RoBERTa" (Table 2)


CLAIMS = [
    Claim("SNIP at s=0.4 matches or beats the dense adapter", "snip", "dense", "matches", paper="BERT"),
    Claim("SNIP at s=0.8 stays close to the dense adapter", "snip_s80", "dense", "matches", paper="RoBERTa"),
    Claim("SNIP beats random pruning at s=0.4", "snip", "random", paper="BERT"),
    Claim("SNIP beats random pruning at s=0.8", "snip_s80", "random_s80"),
    Claim("SNIP beats magnitude pruning at s=0.4", "snip", "magnitude", paper="BERT"),
    Claim("SNIP beats Erdős–Rényi pruning at s=0.4", "snip", "er", paper="BERT"),
    Claim("SNIP beats GraSP at s=0.4", "snip", "grasp", paper="BERT"),
    Claim("Large-Sparse r=256 (s=0.75) beats the dense adapter r=64", "large_sparse4", "dense", paper="BERT"),
    Claim(f"Large-Sparse r=256 converges faster than dense r=64 (mean dev metric over the first {EARLY:.0%} of training)",
          "large_sparse4", "dense", measure="early"),
    Claim("Large-Sparse r=256 matches or beats full fine-tuning", "large_sparse4", "finetune", "matches", paper="BERT"),
    Claim("the dense adapter comes close to full fine-tuning", "dense", "finetune", "matches", paper="BERT"),
]
# Pruning-at-initialization checks (issue 24; not claims of the paper): does SNIP's choice of weights matter?
CHECKS = [
    Claim("SNIP's choice beats its own mask shuffled within each matrix (s=0.4)", "snip", "snip_shuffle"),
    Claim("SNIP's scores carry information: its best beat its worst at the same per-matrix counts (s=0.4)", "snip", "snip_invert"),
    Claim("iterative SNIP (10 rounds) beats one-shot SNIP at s=0.8", "snip_s80_iter10", "snip_s80"),
    Claim("iterative SNIP at s=0.8 stays close to the dense adapter (rescues s=0.8)", "snip_s80_iter10", "dense", "matches"),
    Claim("per-matrix budgets (scope=layer) beat one global ranking at s=0.8", "snip_s80_layer", "snip_s80"),
    Claim("SNIP beats data-free SynFlow (s=0.4)", "snip", "synflow"),
    Claim("2:4 SNIP matches unstructured SNIP at s=0.5", "snip_nm24", "snip_s50", "matches"),
    # issue 34: LoRA at PEFT's default init (B = 0), SNIP scoring B and A one Adam step ahead
    Claim("look-ahead SNIP beats random pruning on a zero-init LoRA (s=0.5)", "zi_lora_snip_s50", "zi_lora_random_s50"),
    Claim("look-ahead SNIP stays close to the dense zero-init LoRA (s=0.5)", "zi_lora_snip_s50", "zi_lora_dense", "matches"),
]


def paper_difference(claim: Claim) -> str:
    """The paper's own (row − reference) of its GLUE averages, e.g. '+0.6 (BERT)'; its Figure 4 for convergence."""
    if claim.measure == "early":
        return "Figure 4"
    averages = {"BERT": PAPER_BERT_AVG, "RoBERTa": PAPER_ROBERTA_AVG_TABLE2}.get(claim.paper or "", {})
    if claim.row not in averages or claim.reference not in averages:
        return "–"
    return f"{averages[claim.row] - averages[claim.reference]:+.1f} ({claim.paper})".replace("-", "−")


def early_score(run: dict) -> float | None:
    """Mean dev metric ×100 over the evaluations in the first EARLY of training.

    None where that mean would mislead: fewer than two early evaluations, or a curve that misses its
    start (evaluations come evenly spaced, so a whole curve's first lies one spacing in; a log cut
    by a resume before ``tasks.loggers.CSVLogger`` kept it starts later and would score high).
    """
    curve = learning_curve(run)
    if len(curve) < 2 or curve[0][0] > 1.5 * (curve[1][0] - curve[0][0]):
        return None
    early = [value for fraction, value in curve if fraction <= EARLY + 1e-9]
    return statistics.mean(early) if len(early) >= 2 else None


def scores(runs: list[dict], measure: str = "final") -> dict[tuple[str, str, int], float]:
    """(row, task, seed) → dev main metric ×100 (or its early mean), each row at its most frequent lr."""
    found = {}
    for run in one_lr_per_row(runs):
        value = 100.0 * run["metrics"][run["main_metric"]] if measure == "final" else early_score(run)
        if value is not None:
            found[(row_key(run), run["task"], run["seed"])] = value
    return found


def differences(runs: list[dict], claim: Claim) -> dict[str, dict[int, float]]:
    """task → seed → (row − reference) for every seed where both ran."""
    by_key = scores(runs, claim.measure)
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


def interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95% t-interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t  # scipy arrives with the GLUE metrics' scikit-learn; only the report needs it here

    mean = statistics.mean(values)
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def verdict(values: list[float], kind: str) -> str:
    """'reproduced', 'within noise' or 'not reproduced' for one claim's pooled (task, seed) differences."""
    bounds = interval(values)
    if bounds is None:
        return "too few pairs"
    _, low, high = bounds
    threshold = 0.0 if kind == "beats" else -MARGIN
    if low > threshold:
        return "reproduced"
    return "not reproduced" if high < threshold else "within noise"


def claims_with_pairs(runs: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[Claim, dict[str, dict[int, float]]]]]:
    """The tasks present (key, name) and every claim with at least one pair, with its differences."""
    present = {r["task"] for r in runs}
    tasks = [(t, name) for t, name in TASKS if t in present]
    found = [(claim, per_task) for claim in CLAIMS + CHECKS if (per_task := differences(runs, claim))]
    return tasks, found


def paired_table(runs: list[dict]) -> str | None:
    """One line per claim with at least one pair; None when no claim has both of its rows."""
    tasks, found = claims_with_pairs(runs)
    if not found:
        return None
    glue = [t for t, _ in tasks if t in GLUE]
    lines = []
    for claim, per_task in found:
        cells = [describe(list(per_task.get(t, {}).values())) for t, _ in tasks]
        average = describe(list(average_over_tasks(per_task, glue).values()))
        pooled = [value for seeds in per_task.values() for value in seeds.values()]
        bounds = interval(pooled)
        ci = f"{bounds[0]:+.1f} [{bounds[1]:+.1f}, {bounds[2]:+.1f}] (n={len(pooled)})" if bounds else f"n={len(pooled)}"
        lines.append(f"| {claim.text} | {claim.row} − {claim.reference} | " + " | ".join(cells)
                     + f" | {average} | {ci} | {verdict(pooled, claim.kind)} | {paper_difference(claim)} |")
    header = "| Claim | difference | " + " | ".join(name for _, name in tasks) + " | Avg. | all pairs: mean [95% CI] | verdict | paper |"
    return "\n".join([header, "|---" * (len(tasks) + 6) + "|", *lines])


def per_task_table(runs: list[dict]) -> str | None:
    """Each claim's verdict task by task (the pooled rule on one task's seeds): where a pooled "within
    noise" hides one task that moves. Three seeds give wide intervals, so read it beside the pooled line."""
    tasks, found = claims_with_pairs(runs)
    if not found:
        return None
    lines = []
    for claim, per_task in found:
        cells = []
        for task, _ in tasks:
            values = list(per_task.get(task, {}).values())
            bounds = interval(values)
            cells.append(f"{bounds[0]:+.1f} [{bounds[1]:+.1f}, {bounds[2]:+.1f}] {verdict(values, claim.kind)}" if bounds
                         else f"n={len(values)}")
        lines.append(f"| {claim.text} | " + " | ".join(cells) + " |")
    header = "| Claim | " + " | ".join(f"{name}: mean [95% CI] verdict" for _, name in tasks) + " |"
    return "\n".join([header, "|---" * (len(tasks) + 1) + "|", *lines])
