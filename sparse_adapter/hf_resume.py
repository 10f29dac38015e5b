"""Which checkpoint the Hugging Face ``Trainer`` is resuming, so ``SparseAdapterCallback`` reads *its* masks.

``Trainer.train(resume_from_checkpoint=...)`` takes a folder anywhere (or ``True``: the newest under
``output_dir``) and resolves it before training starts, but does not hand it to callbacks: reading the masks
from ``output_dir/checkpoint-<step>`` held another run's masks on these weights whenever the two differ.
The resolved path is the ``resume_from_checkpoint`` argument of the Trainer's training loop, the frame that
calls ``on_train_begin``; ``args.resume_from_checkpoint`` and then ``output_dir/checkpoint-<step>`` are the
fallbacks for loops that call the callback themselves.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from sparse_adapter.errors import ConfigError
from sparse_adapter.hold import check_masks
from sparse_adapter.mask_files import MASKS_FILE, read_masks


def checkpoint_being_resumed(args, state) -> Path:
    """The checkpoint folder this training resumes from (as the Trainer resolved it)."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_inner_training_loop" and frame.f_locals.get("resume_from_checkpoint"):
            return Path(frame.f_locals["resume_from_checkpoint"])
        frame = frame.f_back
    if getattr(args, "resume_from_checkpoint", None):
        return Path(args.resume_from_checkpoint)
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def resumed_masks(args, state, params: Mapping[str, torch.nn.Parameter]) -> tuple[dict[str, torch.Tensor], Path]:
    """(the masks saved in the checkpoint being resumed, that checkpoint); ConfigError when they do not fit ``params``."""
    checkpoint = checkpoint_being_resumed(args, state)
    masks = read_masks(checkpoint / MASKS_FILE)
    try:
        step = json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step")
    except (OSError, ValueError):
        step = None
    if step is not None and step != state.global_step:
        raise ConfigError(f"resume_from_checkpoint={checkpoint}: saved at step {step}, but training resumes at step {state.global_step}")
    try:
        check_masks(params, masks)
    except ConfigError as error:
        raise ConfigError(f"resume_from_checkpoint={checkpoint}: its masks do not fit this model ({error})") from None
    missing = sorted(set(params) - set(masks))
    if missing:
        raise ConfigError(f"resume_from_checkpoint={checkpoint}: its masks do not fit this model (none for {missing[0]})")
    return masks, checkpoint
