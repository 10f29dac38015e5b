"""The causal-LM loss without a logits tensor for the whole batch: the LM head and cross-entropy run in token chunks.

    loss = causal_lm_loss(model, input_ids, attention_mask, labels)   # = F.cross_entropy of model(...).logits, shifted

At a 128K–152K vocabulary, 512 tokens' fp32 logits take 250–300 MiB, and the usual loss holds several tensors that
size through backward (the head's logits, their fp32 copy, the log-softmax, its gradient): more than the activations of
a checkpointed 1B model. Here each chunk's logits (``CHUNK_BYTES``) are computed, reduced to a loss and dropped, then
recomputed in backward (``torch.utils.checkpoint``), so one chunk's exist at a time. The same operations on the same
numbers, summed in another order: equal to the full loss to rounding (Liger's and Unsloth's fused losses do the same).

Only the response tokens (labels not -100) reach the head. The model must compute its logits as
``get_output_embeddings()(base_model(...)[0])``; ``chunkable`` checks that once per model on a few tokens (a head
with logit soft-capping or scaling fails it), and ``causal_lm_loss`` takes the plain path where it fails. A model
sharded by FSDP2 takes the plain path too: its root's parameters are gathered only inside its own forward.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy's ignore_index, as in transformers' causal-LM loss
CHUNK_BYTES = 32 * 2**20  # fp32 logits a chunk


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                   temperature: float = 1.0, smoothing: float = 0.0, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """Mean cross-entropy of position t's logits / ``temperature`` against ``labels[t + 1]`` over the tokens not -100,
    in fp32 at least (``label_smoothing=smoothing``), as ``F.cross_entropy`` of the shifted full logits gives it."""
    if sharded(model) or not chunkable(model, input_ids, attention_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return _loss(logits.flatten(0, 1), labels[:, 1:].flatten(), temperature, smoothing, "mean")
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0][:, :-1].flatten(0, 1)
    targets = labels[:, 1:].flatten()
    kept = (targets != IGNORE).nonzero().squeeze(1)
    head = model.get_output_embeddings()
    chunk = max(1, chunk_bytes // (4 * head.weight.shape[0]))
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for start in range(0, len(kept), chunk):
        rows = kept[start:start + chunk]
        total = total + checkpoint(_head_loss, head, hidden[rows], targets[rows], temperature, smoothing, use_reentrant=False)
    return total / len(kept) if len(kept) else hidden.sum() * 0  # no response token: 0 (the full loss's mean gives nan)


def _head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, smoothing: float) -> torch.Tensor:
    return _loss(head(hidden), targets, temperature, smoothing, "sum")


def _loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float, smoothing: float, reduction: str) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # a bf16 head's logits too
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction)


def sharded(model: nn.Module) -> bool:
    """An FSDP2 module (``fully_shard``): calling its parts outside its forward would meet sharded parameters."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(model, FSDPModule)


@torch.no_grad()
def chunkable(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tokens: int = 8) -> bool:
    """Whether the head applied to ``base_model``'s output gives the model's own logits (checked once per model on the
    first ``tokens`` tokens of the first row, in eval mode so dropout draws nothing)."""
    known = getattr(model, "_chunkable_lm_loss", None)
    if known is not None:
        return known
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    answer = False
    if isinstance(head, nn.Linear) and getattr(model, "base_model", model) is not model:
        was_training = model.training
        model.eval()
        try:
            ids = input_ids[:1, :tokens]
            mask = None if attention_mask is None else attention_mask[:1, :tokens]
            logits = model(input_ids=ids, attention_mask=mask).logits
            rebuilt = head(model.base_model(input_ids=ids, attention_mask=mask)[0])
            answer = logits.shape == rebuilt.shape and torch.allclose(logits.float(), rebuilt.float(), rtol=1e-3, atol=1e-4)
        finally:
            model.train(was_training)
    if not answer:
        log.warning("causal_lm_loss: %s's logits are not its output embedding applied to its base model's output; "
                    "computing the loss from the full logits", type(model).__name__)
    model._chunkable_lm_loss = answer
    return answer
