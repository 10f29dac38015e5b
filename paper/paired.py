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
differ in spread, so pooling them widens the interval: the rule errs towards "within noise". Pairs pool
within one task family only (``paper/data/tasks.yaml``: GLUE, QA, ...): a claim with GLUE and SQuAD pairs
gets one line and one verdict per family, SQuAD's F1 decides and its exact match is shown beside it.
``per_task_table`` applies the same rule to each task's seeds alone, so one task that moves shows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from paper.definitions import Claim, checks, claim_setting, claims, families, published, table2_published
from paper.definitions import tasks as task_definitions
from paper.runs import FAMILY, TASKS, learning_curve, one_lr_per_row, row_key

MARGIN = claim_setting("margin")  # points of dev metric ×100: what "matches" may lose (non-inferiority margin)
EARLY = claim_setting("early")  # "converges faster": the mean dev metric over the evaluations in this first fraction
CLAIMS = claims()  # paper/data/claims.yaml
CHECKS = checks()  # pruning-at-initialization checks (issue 24; not claims of the paper)
PerTask = dict[str, dict[int, float]]  # task → seed → (row − reference)
ALSO = {task.key: task.also for task in task_definitions() if task.also}  # e.g. SQuAD: exact match beside F1


def paper_difference(claim: Claim, family: str = "glue") -> str:
    """The paper's own (row − reference) in ``family``: of its GLUE averages, e.g. '+0.6 (BERT)'; beyond GLUE, of
    its Table 2 column for that family, e.g. '+0.3 (BERT, SQuAD F1)'; its Figure 4 for convergence."""
    if claim.measure == "early":
        return "Figure 4"
    if family == "glue":
        tables = {"BERT": "bert_avg", "RoBERTa": "roberta_avg_table2"}
        averages, backbone = (published()[tables[claim.paper]] if claim.paper in tables else {}), claim.paper
    else:
        averages, backbone = table2_published(family) or ({}, "")
    if claim.row not in averages or claim.reference not in averages:
        return "–"
    difference = f"{averages[claim.row] - averages[claim.reference]:+.1f}".replace("-", "−")
    return f"{difference} ({backbone})"


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


def scores(runs: list[dict], measure: str = "final", metric: str | None = None) -> dict[tuple[str, str, int], float]:
    """(row, task, seed) → dev main metric ×100 (or its early mean; or ``metric``, where a run has it), each row at
    one lr (``one_lr_per_row``)."""
    found = {}
    for run in one_lr_per_row(runs):
        if metric is not None:
            value = run["metrics"].get(metric)
            value = 100.0 * value if isinstance(value, (int, float)) else None
        else:
            value = 100.0 * run["metrics"][run["main_metric"]] if measure == "final" else early_score(run)
        if value is not None:
            found[(row_key(run), run["task"], run["seed"])] = value
    return found


def differences(runs: list[dict], claim: Claim, metric: str | None = None) -> PerTask:
    """task → seed → (row − reference) for every seed where both ran (main metric unless ``metric``)."""
    by_key = scores(runs, claim.measure, metric)
    found: PerTask = defaultdict(dict)
    for (row, task, seed), value in by_key.items():
        if row == claim.row and (claim.reference, task, seed) in by_key:
            found[task][seed] = value - by_key[(claim.reference, task, seed)]
    return found


def by_family(per_task: PerTask) -> dict[str, PerTask]:
    """family → its tasks' differences, in the report's family order: verdicts never pool across families
    (a SQuAD F1 difference is no replicate of a CoLA Matthews one)."""
    order = list(families())
    grouped: dict[str, PerTask] = {}
    def position(family: str) -> tuple:
        return (0, order.index(family), "") if family in order else (1, 0, family)

    for family in sorted({FAMILY.get(t, t) for t in per_task}, key=position):
        grouped[family] = {t: seeds for t, seeds in per_task.items() if FAMILY.get(t, t) == family}
    return grouped


def average_over_tasks(per_task: PerTask, tasks: list[str]) -> dict[int, float]:
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


def ci_text(bounds: tuple[float, float, float]) -> str:
    """'+1.4 [-0.5, +3.3]': a mean and its 95% interval."""
    return f"{bounds[0]:+.1f} [{bounds[1]:+.1f}, {bounds[2]:+.1f}]"


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


def claims_with_pairs(runs: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[Claim, PerTask]]]:
    """The tasks present (key, name) and every claim with at least one pair, with its differences."""
    present = {r["task"] for r in runs}
    tasks = [(t, name) for t, name in TASKS if t in present]
    found = [(claim, per_task) for claim in CLAIMS + CHECKS if (per_task := differences(runs, claim))]
    return tasks, found


def claim_lines(runs: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[Claim, str, PerTask]]]:
    """Like ``claims_with_pairs``, one entry per (claim, task family): a claim's text names its family
    ("… [QA (SQuAD)]") when the runs hold more than one family."""
    tasks, found = claims_with_pairs(runs)
    several = len({FAMILY.get(t, t) for t, _ in tasks}) > 1
    names = families()
    lines = []
    for claim, per_task in found:
        for family, mine in by_family(per_task).items():
            lines.append((claim, f"{claim.text} [{names.get(family, family)}]" if several else claim.text, mine))
    return tasks, lines


def also_cell(runs: list[dict], claim: Claim, task: str) -> str:
    """The task's further metrics beside its main one (SQuAD: '; EM +0.4 ± 0.2 (2/3 > 0)'), final measure only."""
    if claim.measure != "final":
        return ""
    return "".join(f"; {short} {describe(list(differences(runs, claim, metric).get(task, {}).values()))}"
                   for metric, short in ALSO.get(task, {}).items() if differences(runs, claim, metric).get(task))


def paired_table(runs: list[dict]) -> str | None:
    """One line per claim (and task family) with at least one pair; None when no claim has both of its rows."""
    tasks, found = claim_lines(runs)
    if not found:
        return None
    lines = []
    for claim, text, per_task in found:
        family = FAMILY.get(next(iter(per_task)))  # Avg. runs over the family's tasks present (GLUE: the paper's average)
        cells = [describe(list(per_task.get(t, {}).values())) + (also_cell(runs, claim, t) if t in per_task else "")
                 for t, _ in tasks]
        mine = [t for t, _ in tasks if FAMILY.get(t) == family]
        average = describe(list(average_over_tasks(per_task, mine).values()))
        pooled = [value for seeds in per_task.values() for value in seeds.values()]
        bounds = interval(pooled)
        ci = f"{ci_text(bounds)} (n={len(pooled)})" if bounds else f"n={len(pooled)}"
        lines.append(f"| {text} | {claim.row} − {claim.reference} | " + " | ".join(cells)
                     + f" | {average} | {ci} | {verdict(pooled, claim.kind)} | {paper_difference(claim, family)} |")
    header = ("| Claim | difference | " + " | ".join(name for _, name in tasks)
              + " | Avg. | all pairs: mean [95% CI] | verdict | paper |")
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
            cells.append(f"{ci_text(bounds)} {verdict(values, claim.kind)}" if bounds else f"n={len(values)}")
        lines.append(f"| {claim.text} | " + " | ".join(cells) + " |")
    header = "| Claim | " + " | ".join(f"{name}: mean [95% CI] verdict" for _, name in tasks) + " |"
    return "\n".join([header, "|---" * (len(tasks) + 1) + "|", *lines])
