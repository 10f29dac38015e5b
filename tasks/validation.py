"""Check a composed config before any model loads: one ConfigError naming the key, never a traceback.

Types come from the dataclasses the config instantiates (``_target_``), so the schema lives in one
place; non-dataclass targets (Trainer, loggers, callbacks) have their keys checked against their
signature. Value ranges and contradictions are registries keyed by dotted path, applied where the
key exists. Checks that need the built model (positions, per-matrix budgets) are in ``check_built``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning.allocation import er_counts, kept_count, nm_group_size, uniform_counts
from sparse_adapter.distributed import config_problem as sharding_problem
from sparse_adapter.quantization import config_problem as quantization_problem

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "task", "optimizer", "adapter", "pruner", "trainer", "logger", "callbacks")
FREE_FORM = ("hydra",)  # Hydra's own node, checked by Hydra


@dataclasses.dataclass
class RunSettings:
    """Types of train.yaml's own keys (keys a later train.yaml adds are accepted, untyped)."""

    sparsity: float = 0.4
    large_sparse: int | None = None
    seed: int = 42
    data_dir: str | None = None
    ckpt_path: str | None = None
    skip_finished: bool = False
    resume_changes: list[str] = dataclasses.field(default_factory=list)


# ---- types ---------------------------------------------------------------------------------------

TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_problem(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits ``hint``; else what was expected."""
    if hint is Any or hint is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if value is None:
        return "a value (not null)"
    if hint is bool:
        return None if isinstance(value, bool) else TYPE_NAMES[bool]
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else TYPE_NAMES[int]
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else TYPE_NAMES[float]
    if hint is str:
        return None if isinstance(value, str) else TYPE_NAMES[str]
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "a list"
        item_hints = [a for a in args if a is not Ellipsis] or [Any]
        for i, item in enumerate(value):
            problem = _type_problem(item, item_hints[min(i, len(item_hints) - 1)])
            if problem:
                return f"a list whose item {i} is {problem}"
        if origin is tuple and Ellipsis not in args and args and len(value) != len(args):
            return f"a list of {len(args)} items"
        return None
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else "a mapping"
    return None  # nested dataclasses and other types: instantiation checks them


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_dataclass_node(path: str, node: dict, cls: type) -> None:
    """Unknown keys and wrong types of a node that instantiates (or describes) dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in node.items():
        if key.startswith("_") and key.endswith("_"):
            continue  # _target_, _convert_, ...
        full = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"{full}: unknown setting (known in {path or 'train.yaml'}: {', '.join(sorted(fields))})")
        hint = hints.get(key, Any)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            check_dataclass_node(full, value, hint)
            continue
        problem = _type_problem(value, hint)
        if problem:
            raise ConfigError(f"{full}={_show(value)}: expected {problem}")


def check_signature_node(path: str, node: dict, target: Callable) -> None:
    """Unknown keyword arguments of a non-dataclass target (lightning.Trainer, a logger, a callback)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in node:
        if not (key.startswith("_") and key.endswith("_")) and key not in parameters:
            raise ConfigError(f"{path}.{key}: unknown setting ({getattr(target, '__name__', target)} takes {', '.join(p for p in parameters if p != 'self')})")


RUNNER_SUPPLIED = ("self", "task", "tokenizer", "data_dir", "seed", "max_positions")  # what tasks.experiment passes itself


def check_data_node(plain: dict) -> None:
    """``data`` holds the keyword arguments of the task's DataModule: its keys and types come from
    that class's signature, so each family (GLUE, SQuAD, XSum) accepts exactly its own settings."""
    node, path = plain.get("data"), (plain.get("task") or {}).get("datamodule")
    if not isinstance(node, dict) or not path:
        return
    try:
        datamodule = get_object(path)
    except Exception as error:  # Hydra raises ImportError or its own error for a bad path
        raise ConfigError(f"task.datamodule={path!r}: cannot be imported ({error})") from error
    try:
        hints = typing.get_type_hints(datamodule.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only costs the type check
        hints = {}
    known = [name for name in inspect.signature(datamodule).parameters if name not in RUNNER_SUPPLIED]
    for key, value in node.items():
        if key not in known:
            raise ConfigError(f"data.{key}: unknown setting (known in data for {datamodule.__name__}: {', '.join(sorted(known))})")
        problem = _type_problem(value, hints.get(key, Any))
        if problem:
            raise ConfigError(f"data.{key}={_show(value)}: expected {problem}")


def check_target_node(path: str, node: Any) -> None:
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        try:
            target = get_object(node["_target_"])
        except Exception as error:  # Hydra raises ImportError or its own error for a bad path
            raise ConfigError(f"{path}._target_={node['_target_']!r}: cannot be imported ({error})") from error
        if dataclasses.is_dataclass(target):
            check_dataclass_node(path, node, target)
        else:
            check_signature_node(path, node, target)
    for key, value in node.items():
        if isinstance(value, dict) and not (key.startswith("_") and key.endswith("_")):
            if path in ("callbacks", "logger") or "_target_" in value:
                check_target_node(f"{path}.{key}", value)


# ---- ranges and contradictions --------------------------------------------------------------------

Rule = Callable[[Any], str | None]


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be ≥ {low:g}"


def above(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low:g}"


def interval(low: float, high: float) -> Rule:
    """[low, high)"""
    return lambda v: None if low <= v < high else f"must be in [{low:g}, {high:g})"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def finite(rule: Rule) -> Rule:
    return lambda v: "must be a finite number" if isinstance(v, float) and not math.isfinite(v) else rule(v)


def each(rule: Rule) -> Rule:
    return lambda v: next((f"item {i}: {p}" for i, x in enumerate(v) if (p := rule(x))), None)


def epochs(v) -> str | None:
    return None if v is None or v == -1 or v >= 1 else "must be ≥ 1 (or -1 for no limit)"


RULES: dict[str, Rule] = {
    "sparsity": finite(interval(0.0, 1.0)),
    "seed": lambda v: None if 0 <= v < 2**32 else "must be in [0, 2^32)",
    "data.max_length": at_least(1),
    "data.batch_size": at_least(1),
    "data.eval_batch_size": at_least(1),
    "data.max_train_samples": optional(at_least(1)),
    "data.max_eval_samples": optional(at_least(1)),
    "data.num_workers": at_least(0),
    "adapter.bottleneck": at_least(1),
    "adapter.r": at_least(1),
    "adapter.alpha": finite(above(0.0)),
    "adapter.dropout": interval(0.0, 1.0),
    "adapter.init_std": finite(above(0.0)),
    "pruner.batches": at_least(0),
    "pruner.temperature": finite(above(0.0)),
    "pruner.lookahead_lr": finite(above(0.0)),
    "pruner.iterations": optional(at_least(1)),
    "pruner.n": at_least(1),
    "pruner.m": at_least(2),
    "optimizer.lr": finite(above(0.0)),
    "optimizer.eps": finite(above(0.0)),
    "optimizer.weight_decay": finite(at_least(0.0)),
    "optimizer.warmup_ratio": interval(0.0, 1.0),
    "optimizer.betas": each(interval(0.0, 1.0)),
    "trainer.max_epochs": epochs,
    "trainer.max_steps": epochs,
    "trainer.accumulate_grad_batches": at_least(1),
    "trainer.gradient_clip_val": optional(finite(at_least(0.0))),
    "trainer.log_every_n_steps": at_least(1),
    "trainer.devices": lambda v: None if v == "auto" or v == -1 or (isinstance(v, int) and v >= 1) or isinstance(v, (list, str)) else "must be ≥ 1, -1 or auto",
    "callbacks.last_checkpoint.every_n_train_steps": optional(at_least(1)),
    "trainer.limit_val_batches": optional(lambda v: None if v > 0 else "must be > 0: the run's summary reports its dev evaluation"),
}

# QA and summarisation windows (issue 26): a zero or negative value was accepted and every prediction came out empty
RULES.update({
    "task.max_answer_length": at_least(1),
    "task.n_best_size": at_least(1),
    "data.max_question_length": at_least(1),
    "data.max_target_length": at_least(1),
})

# Strategies whose parameters are sharded: masks are full-shape buffers, so they cannot act on shards.
SHARDED = ("fsdp", "deepspeed")


def _sharded_strategy(cfg: dict) -> str | None:
    strategy = str((cfg.get("trainer") or {}).get("strategy", "")).lower()
    if any(s in strategy for s in SHARDED):
        return (
            f"trainer.strategy={strategy}: sharded parameters are not supported this way (the pruning masks are full-shape"
            " buffers); use trainer=fsdp (FSDP2, masks cut to each shard) or trainer=ddp, which replicates the adapters"
        )
    return None


# (large_sparse and its contradictions are checked where it is resolved: tasks/resolvers.py, tasks/experiment.py)
CONTRADICTIONS: list[Callable[[dict], str | None]] = [_sharded_strategy]
CONTRADICTIONS.append(quantization_problem)  # backbone.quantization: bitsandbytes installed, an adapter to train
CONTRADICTIONS.append(sharding_problem)  # trainer=fsdp: two or more devices, no quantized weights


def _lookup(cfg: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _plain(cfg: DictConfig) -> dict:
    """The config as plain containers, Hydra's runtime interpolations left unresolved (they need a run)."""
    plain = {}
    for key in cfg:
        if key in FREE_FORM:
            continue
        node = cfg._get_node(key)
        try:
            value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else cfg[key]
        except Exception:  # ${hydra:...} outside a Hydra run: check those nodes unresolved
            value = OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else None
        plain[key] = value
    return plain


def known_top_level() -> set[str]:
    """train.yaml's keys and config groups: anything else at the top level came from a stray ``+key=``."""
    primary = OmegaConf.load(CONF / "train.yaml")
    groups = {next(iter(d)) if isinstance(d, dict) else d for d in OmegaConf.to_container(primary.get("defaults", []))}
    return {str(k) for k in primary if k != "defaults"} | {g for g in groups if g != "_self_"} | set(GROUPS) | set(FREE_FORM)


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs only the config; raises one ConfigError naming the first bad key."""
    plain = _plain(cfg)
    unknown = sorted(set(plain) - known_top_level())
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (see README.md for the settings train.yaml knows)")
    check_dataclass_node("", {k: v for k, v in plain.items() if k in {f.name for f in dataclasses.fields(RunSettings)}}, RunSettings)
    check_data_node(plain)
    for group in GROUPS:
        if isinstance(plain.get(group), dict):
            check_target_node(group, plain[group])
    for key, rule in RULES.items():
        present, value = _lookup(plain, key)
        if not present:
            continue
        try:
            problem = rule(value)
        except TypeError:  # a string or null where a number belongs (keys without a dataclass type)
            problem = "must be a number"
        if problem:
            raise ConfigError(f"{key}={_show(value)}: {problem}")
    for contradiction in CONTRADICTIONS:
        problem = contradiction(plain)
        if problem:
            raise ConfigError(problem)


# ---- checks on the built model --------------------------------------------------------------------

# How many position ids a model type reserves before the first token (RoBERTa counts from padding_idx + 1).
POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


def max_positions(model) -> int | None:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - POSITION_OFFSETS.get(config.model_type, 0)


ALLOCATIONS = {
    "global": lambda shapes, s: {"all adapter matrices together": kept_count(sum(math.prod(x) for x in shapes.values()), s)},
    "layer": uniform_counts,
    "er": er_counts,
}


def check_budget(shapes: dict, sparsity: float, scope: str, m: int = 4) -> None:
    """A sparsity that keeps no weight at all (or none in some matrix, for per-matrix scopes) is a contradiction;
    so is an N:M pattern whose groups of ``m`` do not tile some matrix's input dimension."""
    if scope == "nm":
        for name, shape in shapes.items():
            if (problem := nm_group_size(shape, m)) is not None:
                raise ConfigError(f"pruner.scope=nm: cannot group {name}: {problem}")
        return
    if not shapes or sparsity <= 0 or scope not in ALLOCATIONS:
        return
    counts = ALLOCATIONS[scope](shapes, sparsity)
    empty = [name for name, count in counts.items() if count < 1]
    if empty:
        total = sum(math.prod(x) for x in shapes.values())
        raise ConfigError(
            f"sparsity={sparsity}: keeps no weight in {empty[0]} (pruner.scope={scope}, {total} adapter weights);"
            " lower the sparsity"
        )
