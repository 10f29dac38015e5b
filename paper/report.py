"""Collect run summaries into the paper's tables (Markdown) and plots (PNG).

    python -m paper.report multirun/paper [more dirs ...] --out results/

Every ``summary.json`` below the given folders is one run. Runs are grouped by backbone and
training budget first (one set of tables each), then by table row, lr and task; cells are mean ±
std over seeds of the task's main metric ×100 (CoLA Matthews, MRPC and RTE
accuracy, STS-B Pearson), ``Avg.`` averages the task means as in the paper, ``#Param`` is the
trained adapter parameters as % of the backbone. Plots: metric vs sparsity per pruner,
Large-Sparse vs the dense adapter, and dev metric vs training fraction (the paper's Figure 4)
from the runs' CSV logs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from paper.definitions import published, row_labels, table2_columns, tables
from paper.paired import ALSO, paired_table, per_task_table
from paper.runs import (
    GLUE, TASKS, group_key, learning_curve, load_summaries, lr_of, one_lr_per_row, pruner_label, row_key,
)

__all__ = ["load_summaries", "main", "markdown_table", "report", "row_key"]
ROW_LABELS = row_labels()  # paper/data/rows.yaml
TABLES = {table.title: table for table in tables()}  # paper/data/tables.yaml, in the report's order
BERT_REFERENCE = ("paper BERT Avg.", published()["bert_avg"])


def describe_group(key: str) -> str:
    budget = json.loads(key)
    if len(budget) == 1:
        return f"backbone {budget['backbone']}, budget not recorded"
    parts = [f"backbone {budget['backbone']}"]
    by_epochs = budget.get("max_steps", -1) in (-1, None)
    steps = f"{budget['max_steps']} steps (≤ {budget['epochs']} epochs)"
    parts.append(f"{budget['epochs']} epochs" if by_epochs else steps)
    batch = budget["batch_size"] * (budget.get("accumulate_grad_batches") or 1)
    parts.append(f"batch {batch}")
    parts.append(f"max length {budget['max_length']}")
    windows = (("doc_stride", "stride"), ("max_target_length", "max target"))
    parts += [f"{label} {budget[key]}" for key, label in windows if key in budget]
    rows = budget.get("max_train_samples")
    parts.append(f"first {rows} training rows" if rows else "all training rows")
    parts += [f"first {budget['max_eval_samples']} dev rows"] if budget.get("max_eval_samples") else []
    parts += ["batches grouped by length"] if budget.get("group_by_length") else []
    parts += [f"{k}={v}" for k, v in sorted((budget.get("backbone_overrides") or {}).items())]
    return ", ".join(parts)


def machine_time(runs: list[dict]) -> str:
    """What the runs cost: the sum of their wall times (a resumed job counts every piece), then a job's wall time
    row by row and task by task (mean, range, jobs)."""
    timed = [r for r in runs if r.get("wall_seconds") is not None]
    per_job: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in timed:
        per_job[(row_key(run), run.get("task", "?"))].append(run["wall_seconds"] / 60)
    jobs = "; ".join(f"{row} on {task} {sum(m) / len(m):.0f} ({min(m):.0f}–{max(m):.0f}, {len(m)})"
                     for (row, task), m in sorted(per_job.items()))
    return (f"{len(runs)} run{'s' * (len(runs) != 1)}; {sum(r['wall_seconds'] for r in timed) / 3600:.1f} h of wall time "
            f"in the {len(timed)} that record it (sum of `wall_seconds`)." + (f" A job, in minutes (mean, range, jobs): {jobs}."
                                                                             if jobs else ""))


Cells = dict[tuple[str, float | None, str], list[float]]


def cells(runs: list[dict], metric: str | None = None) -> Cells:
    """(row, lr, task) → main metric ×100 of each seed (or ``metric``, for the runs that record it)."""
    grouped: Cells = defaultdict(list)
    for run in runs:
        value = run["metrics"].get(metric or run["main_metric"])
        if isinstance(value, (int, float)):
            grouped[(row_key(run), lr_of(run), run["task"])].append(100.0 * value)
    return grouped


def columns_of(runs: list[dict], grouped: Cells) -> list[tuple[str, str, Cells]]:
    """(task, column name, its cells) in TASKS order; a task's further metrics (SQuAD EM) follow its main one."""
    columns = []
    for task, name in TASKS:
        if any(t == task for *_, t in grouped):
            columns.append((task, name, grouped))
            for metric, short in ALSO.get(task, {}).items():
                extra = cells([r for r in runs if r["task"] == task], metric)
                if extra:
                    columns.append((task, f"{name.split()[0]} {short}", extra))
    return columns


def baselines(runs: list[dict]) -> dict[str, float]:
    """task → the trivial predictor's main metric ×100 (majority class, or mean for STS-B)."""
    found = {}
    for run in runs:
        if run.get("baseline"):
            found.setdefault(run["task"], 100.0 * run["baseline"]["metrics"][run["main_metric"]])
    return found


def mean_std(values: list[float], floor: float | None = None) -> str:
    if not values:
        return "–"
    mark = " †" if floor is not None and statistics.mean(values) <= floor + 1e-9 else ""
    if len(values) == 1:
        return f"{values[0]:.1f}{mark}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}{mark}"


def param_pct(runs: list[dict], row: str) -> str:
    values = [r["trained_params_pct"] for r in runs if row_key(r) == row]
    return f"{statistics.mean(values):.2f}%" if values else "–"


def markdown_table(runs: list[dict], rows: list[str], reference: tuple[str, dict[str, float]] = BERT_REFERENCE) -> str:
    """One table over comparable runs: a trivial-baseline row first, then each (row, lr) present.

    A cell marked † does not beat the trivial baseline of its task: that run learned nothing the
    majority class (or the mean score) does not already give.
    """
    grouped = cells(runs)
    floors = baselines(runs)
    columns = columns_of(runs, grouped)
    main = [values is grouped for *_, values in columns]  # a further metric's column has no trivial baseline
    glue = [t for (t, *_), is_main in zip(columns, main) if is_main and t in GLUE]
    # the paper's column is a GLUE average: beside QA or XSum alone it would read as their number
    reference_name, reference_values = reference if glue else (None, {})

    def reference_cell(text: str) -> str:  # no reference: no column
        return (f" {text} |" if text else " |") if reference_name else ""

    header = ("| Method | lr | " + " | ".join(name for _, name, _ in columns) + " | Avg. | #Param | seeds |"
              + reference_cell(reference_name))
    lines = [header, "|---" * (len(columns) + 5 + bool(reference_name)) + "|"]
    if floors:
        values = [floors.get(t) for t in glue]
        average = f"{statistics.mean(values):.1f}" if values and None not in values else "–"
        values = [floors.get(t) if is_main else None for (t, *_), is_main in zip(columns, main)]
        shown = " | ".join("–" if v is None else f"{v:.1f}" for v in values)
        lines.append(f"| Trivial baseline (best constant predictor) | – | {shown} | {average} | 0 | – |"
                     + reference_cell(""))
    for row in rows:
        for lr in sorted({lr for (r, lr, _) in grouped if r == row}, key=lambda v: (v is None, v)):
            present = [values.get((row, lr, t), []) for t, _, values in columns]
            means = [statistics.mean(grouped[(row, lr, t)]) for t in glue if grouped.get((row, lr, t))]
            average = f"{statistics.mean(means):.1f}" if glue and len(means) == len(glue) else "–"
            paper = reference_values.get(row, "")
            lines.append(
                f"| {ROW_LABELS.get(row, row)} | {'–' if lr is None else f'{lr:g}'} | "
                + " | ".join(mean_std(v, floors.get(t) if is_main else None)
                             for v, (t, *_), is_main in zip(present, columns, main))
                + f" | {average} | {param_pct(runs, row)} | {max(len(v) for v in present)} |" + reference_cell(paper)
            )
    return "\n".join(lines)


def table2(runs: list[dict]) -> str | None:
    """The paper's Table 2 layout across task families: GLUE Avg. / XSum R2 / SQuAD F1 per row.

    Each column comes from its own backbone and budget (the paper: RoBERTa on GLUE, BART on
    XSum), the one holding most of that column's runs, named under the table; each row shows one lr
    (``one_lr_per_row``). ``None`` when no XSum or SQuAD run exists.
    """
    if not any(r["task"] in ("xsum", "squad") for r in runs):
        return None
    order = TABLES["Table 2: SNIP at sparsity 0.2-0.8"].rows
    rows = [r for r in order if any(row_key(run) == r for run in runs)]
    rows += sorted({row_key(run) for run in runs} - set(order))
    columns, notes = {}, []
    for title, tasks in table2_columns():
        mine = [r for r in runs if r["task"] in tasks]
        if not mine:
            continue
        key = Counter(group_key(r) for r in mine).most_common(1)[0][0]
        chosen = one_lr_per_row([r for r in mine if group_key(r) == key])
        grouped = cells(chosen)
        present = sorted({task for *_, task in grouped})
        values = {}
        for (row, lr, _) in grouped:
            means = [statistics.mean(grouped[(row, lr, t)]) for t in present if grouped.get((row, lr, t))]
            values[row] = f"{statistics.mean(means):.1f}" if len(means) == len(present) else "–"
        floors = baselines(chosen)
        floor = [floors.get(t) for t in present]
        values["_baseline"] = f"{statistics.mean(floor):.1f}" if None not in floor else "–"
        columns[title] = values
        notes.append(f"{title}: {', '.join(present)} on {describe_group(key)}")
    header = "| Method | " + " | ".join(columns) + " | paper (GLUE / XSum / SQuAD) |"
    lines = [header, "|---" * (len(columns) + 2) + "|",
             "| Trivial baseline (constant predictor / LEAD-1) | "
             + " | ".join(c["_baseline"] for c in columns.values()) + " | |"]
    paper = published()["table2"]
    lines += [f"| {ROW_LABELS.get(row, row)} | " + " | ".join(c.get(row, "–") for c in columns.values())
              + f" | {paper.get(row, '')} |" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {note}" for note in notes) + "\n"


def report(runs: list[dict]) -> str:
    """Every table once per backbone and budget; † marks cells at or below the trivial baseline."""
    parts = []
    if cross := table2(runs):
        parts.append(f"## Table 2 layout: GLUE Avg. / XSum R2 / SQuAD F1\n\n{cross}")
    by_group: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_group[group_key(run)].append(run)
    for key, group in sorted(by_group.items()):
        parts.append(f"## {describe_group(key)}\n\n{machine_time(group)}\n")
        shown: set[str] = set()
        for title, table in TABLES.items():
            if any(row_key(r) in table.signature for r in group):
                parts.append(f"### {title}\n\n{markdown_table(group, table.rows, table.reference_column())}\n")
                shown.update(table.rows)
        other = sorted({row_key(r) for r in group} - shown)  # e.g. a dense run whose table has no sparse row yet
        if other:
            parts.append(f"### Other runs\n\n{markdown_table(group, other)}\n")
        if paired := paired_table(group):
            parts.append(f"### Paired differences (row − reference, same seed; dev metric ×100)\n\n{paired}\n")
            parts.append(f"### The same claims task by task (each task's seeds alone)\n\n{per_task_table(group)}\n")
    parts.append("† not above the task's trivial baseline: the best constant predictor on dev "
                 "(the majority class; for STS-B a constant score, correlation 0; "
                 "for XSum LEAD-1, the first sentence; SQuAD has none).\n")
    return "\n".join(parts)


def plot(runs: list[dict], out: Path) -> list[Path]:
    """The plots of one backbone and budget (call once per ``group_key``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    runs = one_lr_per_row(runs)
    grouped = {(row, task): values for (row, _, task), values in cells(runs).items()}
    tasks = [(t, name) for t, name in TASKS if any(task == t for _, task in grouped)]

    # 1. metric vs sparsity, one line per pruner, dense adapter at s=0
    by_pruner: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run["adapter"] != "none" and not run.get("large_sparse"):
            point = (run["task"], round(run["sparsity"], 3))
            by_pruner[pruner_label(run)][point].append(100 * run["metrics"][run["main_metric"]])
    if any(name != "dense" for name in by_pruner):
        figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
        for axis, (task, title) in zip(axes[0], tasks):
            for index, (name, points) in enumerate(sorted(by_pruner.items())):
                xs = sorted(s for (t, s) in points if t == task)
                if not xs:
                    continue
                ys = [statistics.mean(points[(task, s)]) for s in xs]
                style = "o-" if len(xs) > 1 else "o"
                axis.plot(xs, ys, style, label=name, color=f"C{index}")  # same colour in every panel
            axis.set_title(title)
        written.append(_finish(figure, axes[0], "sparsity s", out / "metric_vs_sparsity.png"))

    # 2. Large-Sparse vs dense r=64
    rows = ["dense", "large_sparse2", "large_sparse3", "large_sparse4"]
    if any((row, t) in grouped for row in rows[1:] for t, _ in tasks):
        figure, axis = plt.subplots(figsize=(1.8 * len(tasks) + 2, 3.4))
        width = 0.8 / len(rows)
        for index, row in enumerate(rows):
            values = [statistics.mean(grouped[(row, t)]) if grouped.get((row, t)) else 0.0 for t, _ in tasks]
            label = ROW_LABELS[row].replace("Adapter (dense)", "dense r=64")
            axis.bar([i + index * width for i in range(len(tasks))], values, width, label=label)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], [name for _, name in tasks])
        axis.set_ylabel("dev metric ×100")
        axis.legend(fontsize=7)
        figure.tight_layout()
        written.append(_save(figure, out / "large_sparse_vs_dense.png"))

    # 3. convergence: dev metric vs training fraction (paper Figure 4)
    curves = [(run, learning_curve(run)) for run in runs]
    curves = [(run, points) for run, points in curves if len(points) > 1]
    if curves:
        figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
        for axis, (task, title) in zip(axes[0], tasks):
            for index, row in enumerate(["finetune", "dense", "snip", "large_sparse4"]):
                by_fraction: dict[float, list[float]] = defaultdict(list)  # the seeds evaluate at the same fractions
                for run, points in curves:
                    if run["task"] == task and row_key(run) == row:
                        for fraction, value in points:
                            by_fraction[round(fraction, 4)].append(value)
                if by_fraction:
                    xs = sorted(by_fraction)
                    means = [statistics.mean(by_fraction[x]) for x in xs]
                    axis.plot(xs, means, "o-", label=ROW_LABELS.get(row, row), markersize=3, color=f"C{index}")
                    spread = [statistics.stdev(by_fraction[x]) if len(by_fraction[x]) > 1 else 0.0 for x in xs]
                    if any(spread):  # ± one std over seeds: how far apart two rows must be to mean anything
                        low, high = [m - d for m, d in zip(means, spread)], [m + d for m, d in zip(means, spread)]
                        axis.fill_between(xs, low, high, color=f"C{index}", alpha=0.15, linewidth=0)
            axis.set_title(title)
        xlabel = "fraction of training (mean ± std over seeds)"
        written.append(_finish(figure, axes[0], xlabel, out / "convergence.png"))
    return written


def _finish(figure, axes, xlabel: str, path: Path) -> Path:
    for axis in axes:
        axis.set_xlabel(xlabel)
    axes[0].set_ylabel("dev metric ×100")
    legend = {}  # every series once, whichever panel has it
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes[-1].legend(legend.values(), legend.keys(), fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="multirun (or run) folders to collect")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and the PNG plots here")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    runs = load_summaries(args.folders)
    if not runs:
        folders = ", ".join(map(str, args.folders))
        raise SystemExit(f"error: no complete summary.json under {folders} (any skipped run is named above)")
    text = report(runs)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        if not args.no_plots:
            groups: dict[str, list[dict]] = defaultdict(list)
            for run in runs:
                groups[group_key(run)].append(run)
            for index, (key, group) in enumerate(sorted(groups.items())):
                folder = args.out if len(groups) == 1 else args.out / f"plots-{index + 1}"
                for path in plot(group, folder):
                    print(f"wrote {path}  ({describe_group(key)})")


if __name__ == "__main__":
    main()
