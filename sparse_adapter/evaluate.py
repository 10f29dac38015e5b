"""Evaluate a trained causal-LM run with lm-evaluation-harness, through its Hugging Face model class (HFLM).

    python -m sparse_adapter.evaluate <run dir> --tasks gsm8k[,hellaswag] | my_task.yaml [--limit N] [--batch-size B]

The backbone is rebuilt from the run's own ``summary.json`` (a name of ``conf/backbone/``; ``--backbone PATH``
for a local model folder instead), the adapter loaded from ``adapter.safetensors`` (its backbone identity
checked); nothing from the run folder is executed. A ``.yaml`` in ``--tasks`` is an lm-eval task file (a local
data file through ``dataset_path: json`` runs offline). Results go to ``<run dir>/lm_eval.json`` (or ``--output``).
lm-eval is an optional extra: ``pip install 'sparse-adapter[eval]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparse_adapter.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"
MAX_SUMMARY_BYTES = 16 << 20


def backbone_spec(name: str):
    """One of our own backbone configs by name, or a local model folder; never a config read from the run.

    The YAML is read as plain data (no Hydra in the library): its ``_target_`` may name only our two backbone
    classes, so even an edited ``conf/backbone`` file cannot make this build anything else."""
    import yaml

    from sparse_adapter.backbones import PretrainedBackbone, RandomBackbone

    classes = {f"sparse_adapter.backbones.{cls.__name__}": cls for cls in (PretrainedBackbone, RandomBackbone)}

    def build(node):
        if isinstance(node, dict) and "_target_" in node:
            if node["_target_"] not in classes:
                raise ConfigError(f"--backbone: conf/backbone/{name}.yaml names {node['_target_']!r}, not a backbone class")
            return classes[node["_target_"]](**{k: build(v) for k, v in node.items() if k != "_target_"})
        return node

    if (CONF / f"{name}.yaml").is_file():
        return build(yaml.safe_load((CONF / f"{name}.yaml").read_text()))
    if Path(name).expanduser().is_dir():
        return PretrainedBackbone(str(Path(name).expanduser()))
    raise ConfigError(f"--backbone: '{name}' is neither a config in conf/backbone/ nor a local model folder")


def load_run(run_dir: str | Path, backbone: str | None = None):
    """(model with the run's adapter, tokenizer), in eval mode."""
    from sparse_adapter.io import load_adapter

    run = Path(run_dir)
    summary, adapter = run / "summary.json", run / "adapter.safetensors"
    if not adapter.is_file():
        raise ConfigError(f"run: {run} holds no adapter.safetensors (is it a finished run folder?)")
    if backbone is None:
        if not summary.is_file() or summary.stat().st_size > MAX_SUMMARY_BYTES:
            raise ConfigError(f"run: {run} holds no readable summary.json; name the backbone with --backbone")
        try:
            backbone = json.loads(summary.read_text(encoding="utf-8"))["backbone"]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"run: {summary} does not name its backbone ({error}); pass --backbone") from error
        if not isinstance(backbone, str):
            raise ConfigError(f"run: {summary} does not name its backbone; pass --backbone")
    model, tokenizer = backbone_spec(backbone).build("causal-lm")
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # the end token SFT trained after each response (BERT vocabulary)
    load_adapter(model, adapter)
    return model.eval(), tokenizer


def task_names(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(lm-eval task names, folders to include): a ``.yaml`` item is a task file, read for its ``task`` name."""
    import yaml

    names, folders = [], []
    for item in tasks:
        if item.endswith((".yaml", ".yml")):
            path = Path(item).expanduser()
            if not path.is_file():
                raise ConfigError(f"--tasks: no task file '{item}'")
            spec = yaml.safe_load(path.read_text(encoding="utf-8")) if path.stat().st_size < 1 << 20 else None
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                raise ConfigError(f"--tasks: '{item}' has no 'task: <name>' line (an lm-eval task YAML)")
            names.append(spec["task"])
            folders.append(str(path.resolve().parent))
        else:
            names.append(item)
    return names, sorted(set(folders))


def evaluate(run_dir: str | Path, tasks: list[str], limit: int | None = None, batch_size: int = 1,
             backbone: str | None = None, log_samples: bool = False) -> dict:
    """lm-eval's ``simple_evaluate`` on the run's model; returns its results dict."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ConfigError("evaluate: lm-evaluation-harness is not installed "
                          "(pip install 'sparse-adapter[eval]')") from error
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit={limit} must be ≥ 1")
    names, folders = task_names(tasks)
    only_files = len(folders) > 0 and all(item.endswith((".yaml", ".yml")) for item in tasks)
    # lm-eval's index of all its own tasks takes ~10 s: skipped when every task is a local file
    manager = TaskManager(include_path=folders or None, include_defaults=not only_files)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: lm-eval knows no task {', '.join(unknown)} (a local task: pass its .yaml file)")
    model, tokenizer = load_run(run_dir, backbone)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    return simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=manager, log_samples=log_samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_adapter.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (summary.json + adapter.safetensors)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names and/or task .yaml files")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--backbone", default=None,
                        help="a conf/backbone name or a local model folder (default: the run's)")
    parser.add_argument("--output", default=None, help="where to write the results JSON (default: <run>/lm_eval.json)")
    args = parser.parse_args(argv)
    try:
        tasks = [t for t in args.tasks.split(",") if t]
        results = evaluate(args.run, tasks, args.limit, args.batch_size, args.backbone)
        from sparse_adapter.io import write_json_atomic

        out = Path(args.output) if args.output else Path(args.run) / "lm_eval.json"
        write_json_atomic({"results": results["results"], "limit": args.limit, "tasks": args.tasks}, out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and "_stderr" not in key and key != "alias":
                print(f"{task}\t{key}\t{value:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
