"""GraSP's Hessian-gradient product block by block: the same Hg in about a training step's memory.

Autograd's double backward (``grad(g · ∇L, θ)`` with ``create_graph``) keeps every block's activations,
their gradients and the graph between them alive at once: at the Llama-3.2-1B shape (batch 1 × 512) that is
2.5× a training step's peak (benchmarks/memory.py). When every prunable tensor lives in one stack of blocks
(a ``ModuleList`` called in sequence, as in every HF encoder or decoder), the model is split at the last
block's output h and

    Hg = ∇θ[(J g) · v]|v fixed + Jᵀ H_head (J g),    v = ∂L/∂h,  J = ∂h/∂θ,  H_head = ∂²L/∂h²,

which needs no graph of more than one block at a time:

* the forward pass carries the tangent u = J g from block to block (each block's Jacobian-vector product
  by the double-vjp trick, its graph freed at once) and keeps only each block's input;
* the head's Hessian-vector product H_head u is the only double backward over the head, freed before
  the blocks are touched (a causal LM's, where its loss is checked to be the closure's, token chunk by chunk:
  ``lm_head``; its Hessian is block-diagonal over tokens);
* the backward pass recomputes each block from its saved input, twice differentiable, one block at a time
  (``_Block`` / ``_BlockVJP``: gradient checkpointing that also supports a double backward).

Same operations, another summation order: scores equal the plain double backward to rounding
(tests/test_blockwise.py). Anything else (encoder-decoder stacks, adapters outside the blocks, a block
taking another input that needs a gradient, a tuple output, blocks in training mode, whose recomputation
would draw new dropout masks) takes the plain double backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from sparse_adapter.pruning.lm_head import chunked_head


def block_stack(model: nn.Module | None, tensors: Sequence[torch.Tensor]) -> list[nn.Module] | None:
    """The blocks of the ``ModuleList`` that holds every tensor in ``tensors`` (the longest such list), or None; None
    too when a block is in training mode (a recomputed block would draw new dropout masks)."""
    if model is None or not tensors:
        return None
    wanted = {id(t) for t in tensors}
    best = None
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        owned = {id(p) for block in module for p in block.parameters()}
        if wanted <= owned and (best is None or len(module) > len(best)):
            best = module
    if best is None or any(m.training for block in best for m in block.modules()):
        return None
    return list(best)


def _zeros_for(values, like):
    return [v if v is not None else torch.zeros_like(t) for v, t in zip(values, like)]


class _BlockVJP(torch.autograd.Function):
    """(h, δ, θ) ↦ (∂f/∂h)ᵀδ, (∂f/∂θ)ᵀδ by recomputing the block f; its backward recomputes again, twice
    differentiable, so a double backward holds one block's graph at a time."""

    @staticmethod
    def forward(ctx, run, hidden, grad_out, *weights):
        ctx.run = run
        ctx.save_for_backward(hidden, grad_out, *weights)
        with torch.enable_grad():
            h = hidden.detach().requires_grad_(hidden.requires_grad)
            inputs = ([h] if h.requires_grad else []) + list(weights)
            grads = torch.autograd.grad(run(h), inputs, grad_out, allow_unused=True)
        grads = _zeros_for(grads, inputs)
        d_hidden = grads.pop(0) if h.requires_grad else torch.zeros_like(hidden)
        return (d_hidden, *grads)

    @staticmethod
    def backward(ctx, a_hidden, *a_weights):
        hidden, grad_out, *weights = ctx.saved_tensors
        with torch.enable_grad():
            h = hidden.detach().requires_grad_(True)
            delta = grad_out.detach().requires_grad_(True)
            first = torch.autograd.grad(ctx.run(h), [h, *weights], delta, create_graph=True, allow_unused=True)
            adjoints = (a_hidden, *a_weights)
            dot = [(f * a).sum() for f, a in zip(first, adjoints) if f is not None and a is not None and f.requires_grad]
            if not dot:
                return (None, None, None, *[None] * len(weights))
            second = torch.autograd.grad(sum(dot), [h, delta, *weights], allow_unused=True)
        return (None, *second)


class _Block(torch.autograd.Function):
    """A block's output from its input, saving only the input (gradient checkpointing); with a tangent in
    ``state`` the forward also returns J·(u, g) for the block, its graph freed before the next block."""

    @staticmethod
    def forward(ctx, run, state, hidden, *weights):
        ctx.run = run
        ctx.save_for_backward(hidden, *weights)
        if state.get("tangents") is None:
            return run(hidden)
        u_in = state.get("u")
        with torch.enable_grad():
            h = hidden.detach().requires_grad_(u_in is not None)
            out = run(h)
            probe = torch.zeros_like(out, requires_grad=True)
            inputs = ([h] if u_in is not None else []) + list(weights)
            tangents = ([u_in] if u_in is not None else []) + [state["tangents"][id(w)] for w in weights]
            grads = torch.autograd.grad(out, inputs, probe, create_graph=True, allow_unused=True)
            dot = [(g * t).sum() for g, t in zip(grads, tangents) if g is not None and g.requires_grad]
            u_out = torch.autograd.grad(sum(dot), probe, allow_unused=True)[0] if dot else None
        state["u"] = u_out.detach() if u_out is not None else torch.zeros_like(out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        hidden, *weights = ctx.saved_tensors
        d_hidden, *d_weights = _BlockVJP.apply(ctx.run, hidden, grad_out, *weights)
        return (None, None, d_hidden if hidden.requires_grad else None, *d_weights)


def _needs_grad(value) -> bool:
    if torch.is_tensor(value):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_needs_grad(v) for v in value)
    if isinstance(value, dict):
        return any(_needs_grad(v) for v in value.values())
    return not (value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)))


@contextmanager
def checkpointed_blocks(model: nn.Module, blocks: Sequence[nn.Module], tensors: Sequence[torch.Tensor],
                        tangents: Sequence[torch.Tensor] | None = None):
    """Run each block through ``_Block`` while the context is open, differentiable with respect to ``tensors``;
    yields the state: ``h`` the last block's output, ``u`` its tangent J·``tangents`` (one per tensor) if given,
    ``failed`` when a call could not be checkpointed (it then ran as it is: still exact for a plain double backward)."""
    wanted = {id(t) for t in tensors}
    tangents = {id(t): u for t, u in zip(tensors, tangents)} if tangents is not None else None
    state = {"tangents": tangents, "u": None, "h": None, "failed": False}
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:
        config.use_cache = False  # a cache updated by every recomputation would feed stale keys to attention

    def wrap(block):
        original = block.forward
        weights = [p for p in block.parameters() if id(p) in wanted]  # other trainable tensors stay constants

        def forward(hidden, *args, **kwargs):
            # before the first block nothing depends on the tensors (all in blocks); later blocks must take the last output
            if not torch.is_grad_enabled():  # a side pass inside the closure (lm_loss.chunkable's check): not the loss's
                return original(hidden, *args, **kwargs)
            chained = state["h"] is None or hidden is state["h"]
            if state["failed"] or not chained or _needs_grad(args) or _needs_grad(kwargs):
                state["failed"] = True
                return original(hidden, *args, **kwargs)

            def run(h):
                out = original(h, *args, **kwargs)
                if not torch.is_tensor(out):
                    raise _Unsupported
                return out

            try:
                out = _Block.apply(run, state, hidden, *weights)
            except _Unsupported:
                state["failed"] = True
                return original(hidden, *args, **kwargs)
            state["h"] = out
            return out

        block.forward = forward

    try:
        for block in blocks:
            wrap(block)
        yield state
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
        if use_cache:
            config.use_cache = use_cache


class _Unsupported(Exception):
    """A block whose output is not a single tensor."""


def hessian_gradient(model: nn.Module | None, tensors: Sequence[torch.Tensor], g_stop: Sequence[torch.Tensor],
                     loss_fn: Callable, batch, temperature: float, chunked: bool = True) -> list[torch.Tensor] | None:
    """Hg of one batch over ``tensors`` (the gradient of g_stop · ∇L), block by block; None when the model is
    not a stack of blocks holding every tensor (the caller then takes the plain double backward). A causal LM's
    head runs token chunk by chunk where its loss is checked to be the closure's (``lm_head``; ``chunked``)."""
    blocks = block_stack(model, tensors)
    if blocks is None:
        return None
    with checkpointed_blocks(model, blocks, tensors, g_stop) as state:
        loss = loss_fn(batch, temperature=temperature)
    h, u = state["h"], state["u"]
    if state["failed"] or h is None:
        return plain_hessian_gradient(loss, tensors, g_stop)
    head = chunked_head(model, batch, h, loss, temperature) if chunked and loss.requires_grad else None
    v = torch.autograd.grad(loss, h, create_graph=head is None, allow_unused=True)[0]
    if v is None:  # the loss does not depend on the blocks, so not on the tensors
        return [torch.zeros_like(t) for t in tensors]
    # H_head u: the head's double backward (token chunk by chunk where it can), freed with the loss's graph above h
    # before the blocks are touched
    if head is not None:
        del loss
        w = head.hessian_vector(h, u, v)
        if w is None:  # the rebuilt loss's gradient is not the closure's: the whole pass again, the plain head
            del h, u, v, state
            return hessian_gradient(model, tensors, g_stop, loss_fn, batch, temperature, chunked=False)
    else:
        w = torch.autograd.grad(v, h, u)[0] if v.requires_grad else torch.zeros_like(h)
        del loss
    v = v.detach()
    first = torch.autograd.grad(h, tensors, v, create_graph=True, allow_unused=True)
    dot = [(f * g).sum() for f, g in zip(first, g_stop) if f is not None and f.requires_grad]
    outputs, seeds = [h], [w]
    if dot:
        outputs.append(sum(dot))
        seeds.append(torch.ones_like(outputs[-1]))
    return _zeros_for(torch.autograd.grad(outputs, tensors, seeds, allow_unused=True), tensors)


def plain_hessian_gradient(loss, tensors, g_stop) -> list[torch.Tensor]:
    """grad(g_stop · ∇L, θ) by autograd's double backward over the whole graph."""
    grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    z = [(g * s).sum() for g, s in zip(grads, g_stop) if g is not None and g.requires_grad]
    if not z:
        return [torch.zeros_like(t) for t in tensors]
    return _zeros_for(torch.autograd.grad(sum(z), tensors, allow_unused=True), tensors)
