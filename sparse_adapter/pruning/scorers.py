"""Importance scores for prunable weights: higher means keep.

Each scorer takes the prunable parameters, a loss closure ``loss_fn(batch, temperature)`` and the
scoring batches. Gradients are taken with ``torch.autograd.grad`` so nothing is left in ``.grad``
to leak into the first optimizer step (a bug of the official code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning.blockwise import block_stack, checkpointed_blocks, hessian_gradient, plain_hessian_gradient
from sparse_adapter.registry import Registry
from sparse_adapter.schema import ranged

LossFn = Callable[..., torch.Tensor]  # loss_fn(batch, temperature=1.0) -> scalar loss
Scorer = Callable[..., dict[str, torch.Tensor]]

def _describe(function: Scorer, info: dict) -> Scorer:
    function.needs_batches = info.get("needs_batches", False)
    function.rounds = info.get("rounds", 1)
    function.check = info.get("check") or (lambda model, params: None)
    function.settings = info.get("settings")  # a dataclass of the scorer's own hyperparameters (pruner.options)
    return function


SCORERS = Registry("scorer", "pruner.scorer", _describe)


def register(name: str, *, needs_batches: bool = False, rounds: int = 1, check: Callable | None = None,
             settings: type | None = None):
    """``rounds``: how many pruning rounds the scorer runs when ``pruner.iterations`` is not set;
    ``check(model, params)``: raises ConfigError before training if the scorer cannot score this adapter;
    ``settings``: a dataclass of the scorer's own hyperparameters (types and ``ranged`` bounds), set as
    ``pruner.options`` and passed to the scorer as keyword arguments."""
    return SCORERS.register(name, needs_batches=needs_batches, rounds=rounds, check=check, settings=settings)


@register("random")
def random_scores(params: dict[str, nn.Parameter], generator: torch.Generator, **_) -> dict[str, torch.Tensor]:
    """z ~ U(0, 1): a random topology."""
    return {name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()}


@register("magnitude")
def magnitude_scores(params: dict[str, nn.Parameter], **_) -> dict[str, torch.Tensor]:
    """z = |w| at initialization."""
    return {name: p.detach().abs() for name, p in params.items()}


def is_checkpointing(model: nn.Module | None) -> bool:
    """Whether an HF model trains with activation checkpointing (transformers 5 renamed the property)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the old name warns in transformers 5
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def summed_gradients(params: Sequence[nn.Parameter], loss_fn: LossFn, batches: Iterable, temperature: float = 1.0,
                     model: nn.Module | None = None):
    """Σ over batches of ∂L/∂p, accumulated in place in ``.grad`` by autograd (as ``loss.backward()`` in training),
    so no second gradient-sized buffer is alive while a batch's graph is: scoring peaks no higher than a training
    step (benchmarks/memory.py). A ``model`` that trains with gradient checkpointing scores with it too (HF models
    checkpoint in train mode only; scoring runs in eval mode). Whatever ``.grad`` held before is put back."""
    params = list(params)
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    blocks = block_stack(model, params) if is_checkpointing(model) else None
    try:
        for batch in batches:
            with checkpointed_blocks(model, blocks, params) if blocks else nullcontext():
                loss = loss_fn(batch, temperature=temperature)
            torch.autograd.backward(loss, inputs=params)
            del loss
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


@register("snip", needs_batches=True)
def snip_scores(params: dict[str, nn.Parameter], loss_fn: LossFn, batches: Sequence, model: nn.Module | None = None,
                **_) -> dict[str, torch.Tensor]:
    """Connection sensitivity |w ⊙ g| with g summed over the scoring batches (Lee et al., 2019)."""
    tensors = list(params.values())
    grads = summed_gradients(tensors, loss_fn, batches, model=model)
    return {name: (p.detach() * g).abs() for (name, p), g in zip(params.items(), grads)}


@dataclass
class GraspSettings:
    """GraSP's own hyperparameter (``pruner.options.temperature``; conf/pruner/grasp.yaml)."""

    temperature: float = ranged(200.0, gt=0.0)  # logits are divided by it in both passes (200 in GraSP)


@register("grasp", needs_batches=True, settings=GraspSettings)
def grasp_scores(
    params: dict[str, nn.Parameter],
    loss_fn: LossFn,
    batches: Sequence,
    temperature: float = 200.0,
    double_backward: Callable[[], AbstractContextManager] = nullcontext,
    model: nn.Module | None = None,
    **_,
) -> dict[str, torch.Tensor]:
    """w ⊙ Hg (Wang et al., 2020); keeping the highest equals removing the highest GraSP score -w ⊙ Hg.

    Pass 1 sums g over the batches without a graph; pass 2 backpropagates g_stop · ∇L, which yields
    the Hessian-gradient product Hg. Logits are divided by ``temperature`` (200 in GraSP) in both.
    Only pass 2 runs inside ``double_backward()`` (SDPA's math kernel on HF models), so pass 1 keeps
    the fused attention kernels. Given the ``model`` whose stack of blocks holds every tensor, pass 2 runs
    block by block (``sparse_adapter.pruning.blockwise``: the same Hg in about a training step's memory).
    """
    tensors = list(params.values())
    g_stop = summed_gradients(tensors, loss_fn, batches, temperature, model)
    hg = [torch.zeros_like(p) for p in tensors]
    with double_backward():
        for batch in batches:  # each batch's graph is freed before the next is built
            blockwise = hessian_gradient(model, tensors, g_stop, loss_fn, batch, temperature)
            for accumulator, h in zip(hg, blockwise if blockwise is not None else
                                      plain_hessian_gradient(loss_fn(batch, temperature=temperature), tensors, g_stop)):
                accumulator.add_(h)
    return {name: p.detach() * h for (name, p), h in zip(params.items(), hg)}


@contextmanager
def absolute_values(tensors: Sequence[torch.Tensor]):
    """Replace every tensor by its absolute value for the duration (SynFlow's "linearised" network)."""
    saved = [t.detach().clone() for t in tensors]
    with torch.no_grad():
        for t in tensors:
            t.abs_()
    try:
        yield
    finally:
        with torch.no_grad():
            for t, original in zip(tensors, saved):
                t.copy_(original)


def flow_modules(model: nn.Module | None, params: dict[str, nn.Parameter]) -> list[tuple[nn.Module, int]]:
    """The adapter modules SynFlow feeds (those whose ``flow_input()`` names an input width), checking
    that together they own every prunable tensor."""
    if model is None:
        raise ConfigError("pruner=synflow scores adapter modules, so prune() needs model=")
    found, owned = [], set()
    wanted = {id(p) for p in params.values()}
    for module in model.modules():
        width = module.flow_input() if callable(getattr(module, "flow_input", None)) else None
        if width is None:
            continue
        mine = {id(p) for p in module.parameters()} & wanted
        if mine:
            found.append((module, width))
            owned |= mine
    missing = [name for name, p in params.items() if id(p) not in owned]
    if missing:
        raise ConfigError(
            f"pruner=synflow: {missing[0]} (and {len(missing) - 1} more) belongs to no adapter module with an input path"
            " (SynFlow feeds an all-ones input through bottleneck, parallel and LoRA adapters; prefix, IA³ and"
            " fusion weights have none): choose another pruner"
        )
    return found


def own_parameters(module: nn.Module):
    """An adapter module's own parameters, not those of a frozen layer it wraps (LoRA's base_layer)."""
    return module.adapter_parameters() if callable(getattr(module, "adapter_parameters", None)) else module.named_parameters()


@register("synflow", rounds=100, check=lambda model, params: flow_modules(model, params) and None)
def synflow_scores(params: dict[str, nn.Parameter], model: nn.Module | None = None, **_) -> dict[str, torch.Tensor]:
    """Synaptic flow |θ ⊙ ∂R/∂θ| (Tanaka et al., 2020), data-free, as the official SparseAdapter code adapts it.

    Every adapter module is fed, on its own, an all-ones input of its input width with all its
    own parameters (weights and biases) replaced by their absolute values; R sums their outputs.
    The frozen backbone takes no part (the official code calls each ``Adapter_Layer`` alone the same
    way); a residual or a wrapped frozen layer adds a constant to R and nothing to ∂R/∂θ. The
    iterative schedule (100 rounds by default) is ``prune``'s.
    """
    modules = flow_modules(model, params)
    own = [p for module, _ in modules for _, p in own_parameters(module)]
    tensors = list(params.values())
    with absolute_values(own), torch.enable_grad():
        was_training = [module.training for module, _ in modules]
        for module, _ in modules:
            module.eval()  # no dropout in the flow
        reference = tensors[0]
        flow = sum(module(torch.ones(1, width, dtype=reference.dtype, device=reference.device)).sum()
                   for module, width in modules)
        grads = torch.autograd.grad(flow, tensors, allow_unused=True)
        for (module, _), mode in zip(modules, was_training):
            module.train(mode)
        return {name: (p.detach() * g).abs() if g is not None else torch.zeros_like(p)
                for (name, p), g in zip(params.items(), grads)}
