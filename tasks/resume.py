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
from sparse_adapter.pruning.pruner import recorded_settings

# settings a checkpoint records, in the order a mismatch lists them
RECORDED = ("task", "backbone", "adapter", "adapter_config", "pruner", "scope", "sparsity", "large_sparse", "seed",
            "pruner_settings", "precision", "optimizer_config", "schedule", "data_config", "train_rows")
# dict-valued records, compared (and named) key by key
NESTED = {"adapter_config": "adapter", "pruner_settings": "pruner", "optimizer_config": "optimizer",
          "schedule": "trainer", "data_config": "data"}
# what changes the optimisation but not what the run is: a resume may change these when resume_changes names them
CHANGEABLE = ("seed", "precision", "train_rows", "optimizer.", "trainer.", "data.")
# trainer settings that shape the steps, and data settings that choose the training batches
SCHEDULE = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val")
DATA = ("batch_size", "max_length", "max_train_samples", "group_by_length")


def optimisation_record(cfg, optimizer) -> dict:
    """The settings that shape the optimisation, as plain values (lists, not tuples), for the resume record."""
    import json

    plain = json.loads(json.dumps(dict(vars(optimizer)), default=list))
    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    return {"optimizer_config": plain, "schedule": {k: trainer.get(k) for k in SCHEDULE if k in trainer},
            "data_config": {k: data.get(k) for k in DATA if k in data}}


def read_checkpoint(path: str | Path) -> dict:
    """The run record of a Lightning checkpoint written by ``train.py``; ConfigError if unreadable or foreign."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt_path={path}: no such file")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: not a file (pass the checkpoint, e.g. <run dir>/checkpoints/last.ckpt, "
                          "or use resume=<run dir>)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data: no code runs
    except Exception as error:  # pickle, zip and torch errors all mean the same here
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({first})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict)")
    state = checkpoint.get(KEY)
    if not isinstance(state, dict) or not isinstance(state.get("run"), dict):
        raise ConfigError(f"ckpt_path={path}: written without train.py's run record, so what it trained is unknown; "
                          "start a new run")
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


def check_matches(path: str | Path, recorded: dict, current: dict, allowed=()) -> dict:
    """ConfigError naming every setting where this command differs from what the checkpoint trained.

    Settings named in ``allowed`` (``resume_changes``; only those in ``CHANGEABLE``) may differ: returns them
    as {name: {"checkpoint": value, "now": value}}, for the summary to record."""
    if isinstance(recorded.get("pruner_settings"), dict):  # an older record, read as today's settings() writes it
        recorded = {**recorded, "pruner_settings": recorded_settings(recorded["pruner_settings"])}
    differing = _differences(recorded, current)
    def flat(record: dict) -> dict:
        return {**record, **{f"{p}.{k}": v for key, p in NESTED.items() for k, v in (record.get(key) or {}).items()}}

    flat_saved, flat_now = flat(recorded), flat(current)
    allowed = set(allowed or ())
    refused = [k for k in differing if k not in allowed]
    if refused:
        pairs = ", ".join(f"{k}={flat_saved.get(k)} (command line: {flat_now.get(k)})" for k in refused)
        changeable = [k for k in refused if k.startswith(CHANGEABLE)]
        hint = (f" (or, to change {', '.join(changeable)} on purpose, add resume_changes=[{','.join(changeable)}])"
                if changeable else "")
        raise ConfigError(f"ckpt_path={path}: the checkpoint was trained with {pairs}; drop or fix these overrides to "
                          f"resume it{hint}")
    return {k: {"checkpoint": flat_saved.get(k), "now": flat_now.get(k)} for k in differing}


def check_allowed_changes(allowed) -> None:
    """resume_changes may name only settings that change the optimisation, not what the run is."""
    for name in allowed or ():
        if not isinstance(name, str) or not name.startswith(CHANGEABLE) or name.endswith("."):
            raise ConfigError(
                f"resume_changes: {name!r} cannot change on resume (only seed, precision, train_rows and optimizer.*,"
                f" trainer.{{{','.join(SCHEDULE)}}}, data.{{{','.join(DATA)}}} can)"
            )
