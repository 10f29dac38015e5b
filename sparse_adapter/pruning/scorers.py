"""Importance scores for prunable weights: higher means keep.

Each scorer takes the prunable parameters, a loss closure ``loss_fn(batch, temperature)`` and the
scoring batches. Gradients are taken with ``torch.autograd.grad`` so nothing is left in ``.grad``
to leak into the first optimizer step (a bug of the official code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

LossFn = Callable[..., torch.Tensor]  # loss_fn(batch, temperature=1.0) -> scalar loss
Scorer = Callable[..., dict[str, torch.Tensor]]

SCORERS: dict[str, Scorer] = {}


def register(name: str, *, needs_batches: bool = False):
    def decorator(function: Scorer) -> Scorer:
        function.needs_batches = needs_batches
        SCORERS[name] = function
        return function

    return decorator


@register("random")
def random_scores(params: dict[str, nn.Parameter], generator: torch.Generator, **_) -> dict[str, torch.Tensor]:
    """z ~ U(0, 1): a random topology."""
    return {name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()}


@register("magnitude")
def magnitude_scores(params: dict[str, nn.Parameter], **_) -> dict[str, torch.Tensor]:
    """z = |w| at initialization."""
    return {name: p.detach().abs() for name, p in params.items()}


def summed_gradients(params: Sequence[nn.Parameter], loss_fn: LossFn, batches: Iterable, temperature: float = 1.0):
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(batch, temperature=temperature), params, allow_unused=True)
        for accumulator, grad in zip(total, grads):
            if grad is not None:
                accumulator.add_(grad)
    return total


@register("snip", needs_batches=True)
def snip_scores(params: dict[str, nn.Parameter], loss_fn: LossFn, batches: Sequence, **_) -> dict[str, torch.Tensor]:
    """Connection sensitivity |w ⊙ g| with g summed over the scoring batches (Lee et al., 2019)."""
    tensors = list(params.values())
    grads = summed_gradients(tensors, loss_fn, batches)
    return {name: (p.detach() * g).abs() for (name, p), g in zip(params.items(), grads)}


@register("grasp", needs_batches=True)
def grasp_scores(
    params: dict[str, nn.Parameter],
    loss_fn: LossFn,
    batches: Sequence,
    temperature: float = 200.0,
    double_backward: Callable[[], AbstractContextManager] = nullcontext,
    **_,
) -> dict[str, torch.Tensor]:
    """w ⊙ Hg (Wang et al., 2020); keeping the highest equals removing the highest GraSP score -w ⊙ Hg.

    Pass 1 sums g over the batches without a graph; pass 2 backpropagates g_stop · ∇L, which yields
    the Hessian-gradient product Hg. Logits are divided by ``temperature`` (200 in GraSP) in both.
    Only pass 2 runs inside ``double_backward()`` (eager attention on HF models), so pass 1 keeps
    the fused attention kernels.
    """
    tensors = list(params.values())
    g_stop = summed_gradients(tensors, loss_fn, batches, temperature)
    hg = [torch.zeros_like(p) for p in tensors]
    with double_backward():
        for batch in batches:
            loss = loss_fn(batch, temperature=temperature)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            z = sum((g * s).sum() for g, s in zip(grads, g_stop) if g is not None)
            if not torch.is_tensor(z) or not z.requires_grad:
                continue  # no parameter influences this batch's loss: Hg contribution is zero
            for accumulator, h in zip(hg, torch.autograd.grad(z, tensors, allow_unused=True)):
                if h is not None:
                    accumulator.add_(h)
    return {name: p.detach() * h for (name, p), h in zip(params.items(), hg)}
