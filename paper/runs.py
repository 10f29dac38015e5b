"""Finished runs as the report sees them: their summaries, table row, lr and comparable group."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path

from paper.definitions import tasks

TASKS = [(task.key, task.name) for task in tasks()]  # (key, column name), in column order (paper/data/tasks.yaml)
FAMILY = {task.key: task.family for task in tasks()}  # verdicts pool (task, seed) pairs within one family only
GLUE = {key for key, family in FAMILY.items() if family == "glue"}  # ``Avg.`` averages these only (the paper's)


def row_key(summary: dict) -> str:
    """The table row a run belongs to: its ``row`` choice, else derived from its settings; ``load_summaries``
    qualifies it when runs of one row name differ in a pruner setting (``_row``)."""
    if summary.get("_row"):
        return summary["_row"]
    return base_row_key(summary)


# what a pruner setting is when a summary does not record it (runs from before it existed)
PRUNER_DEFAULTS = {"scope": "global", "iterations": 1, "control": "none", "min_density": 0.0}
ROW_IDENTITY = ("scorer", *PRUNER_DEFAULTS, "n", "m")  # what tells two pruners apart (older summaries record none)


def pruner_settings(summary: dict) -> dict:
    """The settings the masks depend on (``pruner_settings``, or what an older summary implies)."""
    if summary.get("pruner") in (None, "none"):
        return {"scorer": "none"}
    recorded = dict(summary.get("pruner_settings") or {})
    recorded.setdefault("scorer", summary["pruner"])
    recorded.setdefault("scope", summary.get("scope") or "global")
    return {k: v for k, v in {**PRUNER_DEFAULTS, **recorded}.items() if k in ROW_IDENTITY}


def pruner_label(run: dict) -> str:
    """A pruner's name for plots: ``er`` for the ER topology, and the settings that make it another
    pruner (``snip [control=shuffle]``, ``snip [scope=layer]``); one line never mixes two pruners."""
    from sparse_adapter.pruning.scorers import SCORERS

    if run["pruner"] == "none":
        return "dense"
    settings = pruner_settings(run)
    defaults = {**PRUNER_DEFAULTS, "iterations": getattr(SCORERS.get(settings["scorer"]), "rounds", 1)}
    if settings.get("scope") == "er" and settings["scorer"] == "random":
        name, defaults = "er", {**defaults, "scope": "er"}
    else:
        name = settings["scorer"]
    extra = {k: v for k, v in settings.items() if k in defaults and settings[k] != defaults[k]}
    if settings.get("scope") == "nm":
        extra["scope"] = f"nm {settings.get('n')}:{settings.get('m')}"
    return name + (" [" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + "]" if extra else "")


def qualify_rows(runs: list[dict]) -> None:
    """Keep apart runs that share a row name but not their pruner settings (a shuffled SNIP row is never
    averaged with plain SNIP): the variant with the fewest non-default settings keeps the plain name,
    the others get the differing settings appended, e.g. ``snip [control=shuffle]``."""
    by_row: dict[str, dict[str, dict]] = {}
    for run in runs:
        settings = pruner_settings(run)
        by_row.setdefault(base_row_key(run), {})[json.dumps(settings, sort_keys=True)] = settings
    for run in runs:
        variants = by_row[base_row_key(run)]
        if len(variants) < 2:
            continue
        def unusual(settings: dict) -> int:
            return sum(settings.get(k, v) != v for k, v in PRUNER_DEFAULTS.items())
        plain = min(variants.values(), key=lambda v: (unusual(v), json.dumps(v, sort_keys=True)))
        mine = pruner_settings(run)
        extra = {k: v for k, v in mine.items() if plain.get(k) != v}
        if extra:
            run["_row"] = base_row_key(run) + " [" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + "]"


def base_row_key(summary: dict) -> str:
    if summary.get("row"):
        return summary["row"]
    if summary["adapter"] == "none":
        return "finetune"
    if summary["pruner"] == "none":
        return "dense"
    if summary.get("large_sparse"):
        return f"large_sparse{summary['large_sparse']}"
    if abs(summary["sparsity"] - 0.4) < 1e-9:
        return "er" if summary.get("scope") == "er" else summary["pruner"]
    return f"{summary['pruner']}_s{round(100 * summary['sparsity'])}"


# what the tables read
REQUIRED = ("task", "adapter", "pruner", "sparsity", "seed", "main_metric", "metrics", "trained_params_pct")


_warned: set[str] = set()


def warn(message: str) -> None:
    """One ``warning:`` line on stderr, once per message (plots read a run's log more than once)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def summary_problem(summary) -> str | None:
    """Why a summary cannot go into a table (None: it can)."""
    if not isinstance(summary, dict):
        return "not a JSON object"
    missing = [key for key in REQUIRED if key not in summary]
    if missing:
        return f"incomplete: no {', '.join(missing)}"
    metrics, metric = summary["metrics"], summary["main_metric"]
    if not isinstance(metrics, dict) or metric not in metrics:
        return f"incomplete: no value for its main metric {metric!r}"
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"main metric {metric}={value!r} is not a finite number"
    if not isinstance(summary["sparsity"], (int, float)) or isinstance(summary["sparsity"], bool):
        return f"sparsity={summary['sparsity']!r} is not a number"
    baseline = summary.get("baseline")
    if baseline is not None and not (isinstance(baseline, dict) and isinstance(baseline.get("metrics"), dict)
                                     and isinstance(baseline["metrics"].get(metric), (int, float))):
        return f"baseline has no number for {metric!r}"
    return None


def load_summaries(folders: list[Path]) -> list[dict]:
    """Every complete, readable ``summary.json`` below ``folders``; any other is skipped with one warning naming it."""
    runs = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("summary.json")):
            try:
                summary = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                warn(f"{path}: skipped (not readable JSON: {reason})")
                continue
            if isinstance(summary, dict) and summary.get("status") != "complete":
                warn(f"{path}: skipped (status {summary.get('status')!r}, not 'complete')")
                continue
            problem = summary_problem(summary)
            if problem:
                warn(f"{path}: skipped ({problem})")
                continue
            summary["_dir"] = str(path.parent)
            runs.append(summary)
    qualify_rows(runs)
    return runs


def lr_of(run: dict) -> float | None:
    return (run.get("budget") or {}).get("lr")


def group_key(run: dict) -> str:
    """Runs comparable in one table: same backbone and budget (the lr is a column of its own)."""
    budget = {k: v for k, v in (run.get("budget") or {}).items() if k != "lr"}
    return json.dumps({"backbone": run.get("backbone"), **budget}, sort_keys=True)


def one_lr_per_row(runs: list[dict]) -> list[dict]:
    """Each row at one lr, never an average over lrs: its most frequent, and among equally frequent ones (an lr
    sweep: one job per lr) the best mean dev score, the sweep's own rule, so its report shows each row's winner."""
    count = Counter((row_key(r), lr_of(r)) for r in runs)
    scores: dict[tuple, list[float]] = {}
    for r in runs:
        value = (r.get("metrics") or {}).get(r.get("main_metric"))
        if isinstance(value, (int, float)) and math.isfinite(value):
            scores.setdefault((row_key(r), lr_of(r)), []).append(value)
    def rank(key: tuple) -> tuple:
        mean = sum(scores[key]) / len(scores[key]) if scores.get(key) else -math.inf
        return -count[key], -mean
    chosen: dict[str, float | None] = {}
    for row, lr in sorted(count, key=rank):
        chosen.setdefault(row, lr)
    return [r for r in runs if lr_of(r) == chosen[row_key(r)]]


def learning_curve(run: dict) -> list[tuple[float, float]]:
    """(fraction of training steps, dev main metric ×100) from the run's CSV log."""
    path = Path(run["_dir"]) / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    key = f"val/{run['main_metric']}"
    total = max(1, run.get("global_steps", 1) if isinstance(run.get("global_steps"), int) else 1)
    points: dict[float, float] = {}  # the validation after training repeats the last point
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                if record.get(key) and math.isfinite(value := float(record[key])):
                    points[min(int(record["step"]) + 1, total) / total] = 100.0 * value
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, csv.Error) as error:
        warn(f"{path}: learning curve skipped (not a readable metrics log: {type(error).__name__}: {str(error)[:120]})")
        return []
    return sorted(points.items())
