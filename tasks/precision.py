"""``trainer.precision=auto``: bf16 mixed precision where the hardware runs it fast, fp32 elsewhere.

bf16-mixed keeps fp32 master weights (Lightning's MixedPrecision: autocast around the steps only),
so masks, optimizer state, pruning scores (PruneAtInit runs outside the steps) and saved adapters
stay fp32; only the matmuls of the forward and backward passes run in bf16. On 2 CPU cores with
avx512_bf16 a MiniLM adapter step runs about 1.6× faster (RESULTS.md, step time).
"""

from __future__ import annotations

import torch

# device -> whether bf16 runs fast there (CPU: AMX tiles or avx512_bf16; CUDA: native bf16)
FAST_BF16 = {
    "cpu": lambda: bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()),
    "cuda": lambda: torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
}


def device_of(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def resolve_precision(precision, accelerator: str = "auto") -> str:
    """The Lightning precision a run uses: ``auto`` becomes bf16-mixed or 32-true; anything else stays."""
    if str(precision) != "auto":
        return str(precision)
    return "bf16-mixed" if FAST_BF16[device_of(str(accelerator))]() else "32-true"
