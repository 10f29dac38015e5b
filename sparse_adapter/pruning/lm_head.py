"""The causal-LM head's Hessian-vector product in token chunks: GraSP's last logit-sized double backward, bounded.

After the last block, a causal LM's loss is  L(h) = Σ_t CE(W · norm(h_t) / T, y_t+1) / N: each token's term depends
on that token's hidden state alone (a per-token norm, a linear head, a per-token cross-entropy), so the head's
Hessian is block-diagonal over tokens and H_head u is the concatenation of each chunk's own Hessian-vector product.
The plain double backward through the head holds about 7 logit-sized tensors (tokens × vocab); chunk by chunk,
each chunk's graph freed before the next, it holds 7 × chunk × vocab (``CHUNK_BYTES`` of logits a chunk).
Same operations on the same numbers, summed in another order: exact to rounding.

The loss closure is opaque, so the chunked head is used only where it is checked to be the closure's loss:
the architecture names its final norm (``Layout.final_norm``), the batch carries ``labels``, and the loss
rebuilt from them (shifted by one, -100 ignored, mean over the kept tokens, logits / T, or / 1 for a closure that
returns the model's own loss) equals the closure's loss in value and in its gradient with respect to the last
block's output, to the rounding of their dtypes. Anything else (label smoothing, another reduction, an extra term, a
classification head, logits scaled by the architecture) fails the check and GraSP takes the plain double backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparse_adapter.adapters.layouts.registry import layouts_of_type
from sparse_adapter.lm_loss import IGNORE  # cross-entropy's ignore_index, as in transformers' causal-LM loss

CHUNK_BYTES = 32 * 2**20  # one chunk's logits; the double backward holds about 7 such tensors


def causal_lm_head(model: nn.Module | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], int] | None:
    """(h ↦ logits, vocabulary size) of the first causal LM in ``model`` (a PEFT wrapper's too) whose architecture
    names its final norm; None otherwise."""
    from transformers import PreTrainedModel

    for module in model.modules() if model is not None else ():
        if not isinstance(module, PreTrainedModel):
            continue
        output = module.get_output_embeddings()
        norms = {layout.final_norm for layout in layouts_of_type(module.config.model_type).values()} - {None}
        vocab = getattr(output, "out_features", None)
        if output is None or len(norms) != 1 or not isinstance(vocab, int):
            return None
        norm = module.base_model.get_submodule(norms.pop())
        return (lambda h: output(norm(h))), vocab
    return None


@dataclass
class ChunkedHead:
    """The causal-LM loss as a function of the last block's output h, token by token (the kept ones)."""

    head: Callable[[torch.Tensor], torch.Tensor]
    targets: torch.Tensor  # (tokens,) the next token of each kept position
    kept: torch.Tensor  # (tokens,) their indices among h's flattened positions
    temperature: float
    dtype: torch.dtype  # the closure's loss's: the logits are cast to it before the division, as transformers' loss does
    chunk: int  # tokens a chunk

    def losses(self, hidden: torch.Tensor, rows: slice) -> torch.Tensor:
        """The kept tokens' ``rows`` share of the mean loss (a sum over chunks gives the loss)."""
        logits = self.head(hidden).to(self.dtype) / self.temperature
        return F.cross_entropy(logits, self.targets[rows], reduction="sum") / len(self.targets)

    def value(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.detach().flatten(0, -2)
        with torch.no_grad():
            return sum(self.losses(flat[self.kept[rows]], rows) for rows in self.chunks())

    def chunks(self) -> list[slice]:
        return [slice(start, start + self.chunk) for start in range(0, len(self.targets), self.chunk)]

    def hessian_vector(self, h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """H_head u chunk by chunk; None unless the chunks' gradient equals ``v`` (the closure's ∂L/∂h)."""
        flat, tangent = h.detach().flatten(0, -2), u.flatten(0, -2)
        gradient, product = torch.zeros_like(flat), torch.zeros_like(flat)
        for rows in self.chunks():
            index = self.kept[rows]
            hidden = flat[index].requires_grad_(True)
            with torch.enable_grad():
                first = torch.autograd.grad(self.losses(hidden, rows), hidden, create_graph=True)[0]
                second = torch.autograd.grad(first, hidden, tangent[index], allow_unused=True)[0] if first.requires_grad else None
            gradient[index] = first.detach()
            if second is not None:
                product[index] = second
            del first, second, hidden  # this chunk's graph, before the next
        if not close(gradient, v.flatten(0, -2), self.dtype, h.dtype):
            return None
        return product.view_as(h)


def chunked_head(model: nn.Module | None, batch, h: torch.Tensor, loss: torch.Tensor,
                 temperature: float) -> ChunkedHead | None:
    """The loss rebuilt from ``batch["labels"]`` through the architecture's head, if its value is the closure's ``loss``
    at logits / ``temperature`` (or / 1: the model's own loss); None otherwise (the caller keeps the plain path)."""
    found = causal_lm_head(model)
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if found is None or not torch.is_tensor(labels) or labels.dtype != torch.long or labels.shape != h.shape[:-1] \
            or h.dim() != 3 or loss.dim() != 0:
        return None
    head, vocab = found
    following = F.pad(labels[:, 1:], (0, 1), value=IGNORE).flatten()  # position t predicts token t + 1
    kept = (following != IGNORE).nonzero().squeeze(1)
    if len(kept) == 0:
        return None
    if not loss.dtype.is_floating_point:
        return None
    chunk = max(1, CHUNK_BYTES // (vocab * loss.element_size()))
    for t in dict.fromkeys((float(temperature), 1.0)):
        candidate = ChunkedHead(head, following[kept].to(h.device), kept.to(h.device), t, loss.dtype, chunk)
        if close(candidate.value(h), loss.detach(), loss.dtype, h.dtype):
            return candidate
    return None


def close(rebuilt: torch.Tensor, reference: torch.Tensor, *dtypes: torch.dtype) -> bool:
    """Equal to the rounding of the coarsest of ``dtypes`` (the loss's, h's), relative to the reference's norm:
    √eps, 3.5e-4 in fp32, 1.5e-8 in fp64."""
    tolerance = max(math.sqrt(torch.finfo(dtype).eps) for dtype in dtypes)
    scale = torch.linalg.vector_norm(reference.double())
    return bool(torch.linalg.vector_norm((rebuilt - reference).double()) <= tolerance * max(float(scale), 1e-30))
