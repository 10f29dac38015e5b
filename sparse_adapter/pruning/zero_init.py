"""Scores that stay meaningful when adapter factors start at zero, and a check that they do.

A weight-times-gradient score degenerates on a factor initialized at zero (LoRA's B under PEFT's
default and ``adapter.init=lora``; a bottleneck's up-projection under the LoRA init): for B, ``w = 0``
so ``|w·g| = 0``; for its partner A, ``∂L/∂A = s·Bᵀ δ xᵀ = 0`` while B is zero. Every score in both
matrices ties, and the tie-break (a seeded permutation) decides the mask: random pruning under
another name.

The look-ahead scores such factors where training will put them one step later. Adam's first step
moves every weight by ``lr·sign(g)`` (its bias-corrected moments give ``m/√v = g/|g|``), so each
all-zero factor is set to ``B̃ = -lr·sign(∂L/∂B)`` and the scorer runs at ``(A, B̃)``:

* for an entry of B̃, SNIP's ``|B̃·∂L/∂B̃| = lr·|g_B| + O(lr²)``: the first-order loss decrease of
  letting that weight train one step (RigL's growth score ``|g|``, in SNIP's units);
* for A, ``∂L/∂A = s·B̃ᵀ δ xᵀ`` no longer vanishes and ``|A·∂L/∂A|`` is SNIP's sensitivity one
  step ahead, ``lr·|A ⊙ (H_AB sign(g_B))|`` to first order.

Both are linear in ``lr`` to first order, so the ranking across a LoRA's factors does not depend on
the step size; weights that are zero are set back afterwards. Only all-zero tensors move (a tensor
with some non-zero entries is scored as it is), and only for scorers that read the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from sparse_adapter.errors import ConfigError, DegenerateScoresWarning

ZERO_INIT_MODES = ("lookahead", "none")
DEGENERATE_MODES = ("warn", "error")


def zero_tensors(params: Mapping[str, nn.Parameter]) -> list[str]:
    """Names of the prunable tensors that are exactly zero everywhere."""
    return [name for name, p in params.items() if p.numel() > 0 and not bool(p.detach().any())]


@contextmanager
def lookahead(params: Mapping[str, nn.Parameter], names: list[str], loss_fn, batches: Iterable, lr: float,
              masks: Mapping[str, torch.Tensor] | None = None):
    """Set each all-zero tensor in ``names`` to its first Adam step ``-lr·sign(g)`` (g summed over
    ``batches``; entries pruned by an earlier round stay zero) while the block runs, then back to zero."""
    from sparse_adapter.pruning.scorers import summed_gradients

    if not names:
        yield
        return
    tensors = [params[name] for name in names]
    grads = summed_gradients(tensors, loss_fn, batches)
    with torch.no_grad():
        for name, p, g in zip(names, tensors, grads):
            step = -lr * torch.sign(g)
            if masks is not None and name in masks:
                step = step * masks[name].to(step.device)
            p.copy_(step)
    try:
        yield
    finally:
        with torch.no_grad():
            for p in tensors:
                p.zero_()


def tied_tensors(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Tensors (of more than one weight) whose surviving weights all have the same score."""
    tied = []
    for name, score in scores.items():
        values = score.detach().reshape(-1)
        if masks is not None and name in masks:
            values = values[masks[name].reshape(-1).to(values.device)]
        if values.numel() > 1 and bool((values == values[0]).all()):
            tied.append(name)
    return tied


def report_degenerate(tied: list[str], scorer: str, on_degenerate: str) -> None:
    """Say which tensors a scorer could not rank: a ConfigError with ``on_degenerate=error``, else a warning."""
    if not tied:
        return
    shown = ", ".join(tied[:4]) + (f" and {len(tied) - 4} more" if len(tied) > 4 else "")
    message = (
        f"pruner.scorer={scorer}: every weight of {len(tied)} tensor(s) got the same score ({shown}), so their masks"
        " come from the seeded tie-break, not from the scorer (under the global scope a tensor tied at 0 is pruned"
        " first). Usual cause: a factor initialized at zero with a data-free scorer (magnitude, synflow), or"
        " pruner.zero_init=none. Use pruner=snip/grasp (they score zero factors one Adam step ahead),"
        " or a non-zero init"
    )
    if on_degenerate == "error":
        raise ConfigError(message + "; pruner.on_degenerate=warn continues anyway")
    warnings.warn(message, DegenerateScoresWarning, stacklevel=3)
