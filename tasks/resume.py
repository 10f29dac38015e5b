"""The checkpoint is the truth: a resume whose settings differ from what the checkpoint trained is refused.

A summary describes the run that produced the weights. Resuming a 40%-sparse checkpoint with
``sparsity=0.8`` would otherwise be filed as an 80% run, and a dense checkpoint resumed with
``pruner=snip`` would be pruned after training. ``RECORDED`` lists what must agree.
"""

from __future__ import annotations

from pathlib import Path

import torch

from callbacks.resume import KEY
from sparse_adapter.errors import ConfigError

# settings a checkpoint records, in the order a mismatch lists them
RECORDED = ("task", "backbone", "adapter", "adapter_config", "pruner", "scope", "sparsity", "large_sparse", "seed", "pruner_settings",
            "precision")
NESTED = {"adapter_config": "adapter", "pruner_settings": "pruner"}  # dict-valued records, compared (and named) key by key


def read_checkpoint(path: str | Path) -> dict:
    """The run record of a Lightning checkpoint written by ``train.py``; ConfigError if unreadable or foreign."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt_path={path}: no such file")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: not a file (pass the checkpoint, e.g. <run dir>/checkpoints/last.ckpt, or use resume=<run dir>)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs
    except Exception as error:  # pickle, zip and torch errors all mean the same here
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({first})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict)")
    state = checkpoint.get(KEY)
    if not isinstance(state, dict) or not isinstance(state.get("run"), dict):
        raise ConfigError(f"ckpt_path={path}: written without train.py's run record, so what it trained is unknown; start a new run")
    return state["run"]


def _differences(recorded: dict, current: dict) -> list[str]:
    differing = []
    for key in RECORDED:
        if key not in recorded:  # written before this setting was recorded: nothing to hold the command line to
            continue
        saved, now = recorded.get(key), current.get(key)
        if key in NESTED and isinstance(saved, dict) and isinstance(now, dict):
            differing += [f"{NESTED[key]}.{k}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        elif saved != now:
            differing.append(key)
    return differing


def check_matches(path: str | Path, recorded: dict, current: dict) -> None:
    """ConfigError naming every setting where this command differs from what the checkpoint trained."""
    differing = _differences(recorded, current)
    if differing:
        flat_saved = {**recorded, **{f"{p}.{k}": v for key, p in NESTED.items() for k, v in (recorded.get(key) or {}).items()}}
        flat_now = {**current, **{f"{p}.{k}": v for key, p in NESTED.items() for k, v in (current.get(key) or {}).items()}}
        pairs = ", ".join(f"{k}={flat_saved.get(k)} (command line: {flat_now.get(k)})" for k in differing)
        raise ConfigError(f"ckpt_path={path}: the checkpoint was trained with {pairs}; drop or fix these overrides to resume it")
