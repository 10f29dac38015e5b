"""The paper's optimizer: AdamW β=(0.9, 0.98), weight decay 0.1, linear warmup then linear decay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from sparse_adapter.schema import check_ranges, ranged

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class AdamWConfig:
    lr: float = ranged(1e-3, gt=0.0)
    betas: tuple[float, float] = ranged((0.9, 0.98), ge=0.0, lt=1.0, each=True)
    eps: float = ranged(1e-6, gt=0.0)
    weight_decay: float = ranged(0.1, ge=0.0)
    warmup_ratio: float = ranged(0.1, ge=0.0, lt=1.0)

    def validate(self) -> None:
        check_ranges(self, prefix="optimizer")

    def build(self, model: nn.Module, total_steps: int) -> dict:
        """Optimizer and per-step schedule for Lightning; biases and norms get no weight decay."""
        self.validate()
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                (no_decay if name.endswith(NO_DECAY) else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
        )
        scheduler = warmup_then_linear_decay(optimizer, int(self.warmup_ratio * total_steps), total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_then_linear_decay(optimizer: torch.optim.Optimizer, warmup: int, total_steps: int) -> LambdaLR:
    """transformers' linear warm-up and decay, one step in: the peak lr × (s + 1)/(warmup + 1) at step s < warmup,
    then linearly down to 0 at ``total_steps``.

    ``get_linear_schedule_with_warmup`` starts at lr 0, an optimizer step that trains nothing; its schedule over
    ``warmup + 1`` and ``total_steps + 1`` steps, read one step ahead, is this project's schedule since its start
    (so checkpoints written before keep their step count: the scheduler's state is its step, as it always was).
    """
    # imported here: transformers.optimization pulls in the Trainer's utilities, peft and bitsandbytes
    from transformers import get_linear_schedule_with_warmup

    linear = get_linear_schedule_with_warmup(optimizer, warmup + 1, total_steps + 1).lr_lambdas[0]
    return LambdaLR(optimizer, lambda step: linear(step + 1))
