"""Masks on sharded parameters (FSDP2): shard blocks, give each mask its parameter's placements, gather for saving.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns every parameter into a ``DTensor`` sharded on dim 0;
its gradient and Adam's moments are DTensors with the same placements. A full-shape bool mask (identical
on every rank: rank 0 prunes and broadcasts) becomes the matching DTensor with
``distribute_tensor(mask, parameter.device_mesh, parameter.placements)``, so masking gradients, weights
and optimizer state acts on each rank's local shard, and the gathered tensors hold exactly the mask.
Masks stay full-shape buffers beside the model (FSDP2 shards parameters only), so checkpoints carry them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparse_adapter.errors import ConfigError


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def mask_like(mask: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """``mask`` with the parameter's sharding (a DTensor with its mesh and placements), or itself for a plain tensor.

    Every rank holds the same full mask, so each cuts its own shard locally (``src_data_rank=None``: no
    communication, nothing for ranks to wait on)."""
    if not is_sharded(parameter):
        return mask
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(mask.to(parameter.device_mesh.device_type), parameter.device_mesh, parameter.placements,
                             src_data_rank=None)


def block_classes(model: nn.Module) -> tuple[str, ...]:
    """The transformer block classes of a Hugging Face model (``_no_split_modules``, as accelerate's FSDP auto-wrap)."""
    names = []
    for module in model.modules():
        names += list(getattr(module, "_no_split_modules", None) or [])
    return tuple(dict.fromkeys(names))


def blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP2 wraps one by one: modules whose class the model names in ``_no_split_modules``."""
    names = block_classes(model)
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(f"trainer=fsdp: cannot find the transformer blocks of '{kind}' to shard one by one "
                          f"(the model names no block class in _no_split_modules{': ' + ', '.join(names) if names else ''});"
                          " use trainer=ddp")
    return found


def shard_blocks(model: nn.Module, mesh) -> int:
    """``fully_shard`` each block, then the root (embeddings, head); returns how many blocks were wrapped."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return 0  # already sharded (a validate after fit configures the model again)
    found = blocks(model)
    for block in found:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(found)


def unshard_(model: nn.Module) -> None:
    """All-gather every FSDP2 module of ``model`` for good (every rank must call it): its parameters are full
    tensors afterwards, for the summary and the adapter file. Only after the last forward pass."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def gather_batches(batches: list, group=None) -> list:
    """Every rank's scoring batches on every rank, step by step (rank 0's i-th, rank 1's i-th, ...): the rows a
    single process with the global batch size sees in its first steps (tasks.sampling deals each step's rows
    out round-robin), so rank 0 scores what a one-process run of the same seed scores."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return batches
    shares: list = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(shares, [_to_cpu(b) for b in batches], group=group)
    return [share[i] for i in range(min(len(s) for s in shares)) for share in shares]


def _to_cpu(batch):
    if torch.is_tensor(batch):
        return batch.cpu()
    if isinstance(batch, dict):
        return {k: _to_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_cpu(v) for v in batch)
    return batch


def sharded_pairs(pairs: Iterable[tuple[nn.Parameter, torch.Tensor]]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask) pairs with each mask given its parameter's sharding."""
    return [(parameter, mask_like(mask, parameter)) for parameter, mask in pairs]


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The gathered tensor of a DTensor (every rank must call it), or the tensor itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def sharded(trainer) -> bool:
    """Whether a Lightning trainer shards parameters (``ModelParallelStrategy``: FSDP2)."""
    return type(getattr(trainer, "strategy", None)).__name__ == "ModelParallelStrategy"


def config_problem(cfg: dict) -> str | None:
    """The one-line problem of a composed config's sharded strategy (trainer=fsdp), before anything loads."""
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy")
    if not (isinstance(strategy, dict) and str(strategy.get("_target_", "")).endswith("ModelParallelStrategy")):
        return None
    devices = trainer.get("devices")
    if devices == 1 or (isinstance(devices, (list, tuple)) and len(devices) == 1):
        return (f"trainer=fsdp with trainer.devices={devices}: sharding needs 2 or more processes; "
                "use trainer=default on one device")
    method = (cfg.get("backbone") or {}).get("quantization") or "none"
    if method != "none":
        return (f"trainer=fsdp with backbone.quantization={method}: FSDP2 cannot shard bitsandbytes' packed weights; "
                "use trainer=ddp or backbone.quantization=none")
    return None


def trainer_problem(args) -> str | None:
    """Why ``SparseAdapterCallback`` cannot hold masks under a Hugging Face ``TrainingArguments`` setting, or None.

    DeepSpeed ZeRO-1/2/3 and FSDP2 are held exactly (``sparse_adapter.hold``: ZeRO's flat partitions, FSDP2's
    DTensor shards); what lives elsewhere is refused with one line rather than trained wrong: ZeRO's offloaded
    optimizer state or parameters (CPU/NVMe copies the masks never see) and FSDP1's flat parameters."""
    config = deepspeed_config(args)
    if config is not None:
        zero = config.get("zero_optimization") or {}
        for option in ("offload_optimizer", "offload_param"):
            device = (zero.get(option) or {}).get("device") if isinstance(zero.get(option), dict) else zero.get(option)
            if device not in (None, "none", False):
                return (f"SparseAdapterCallback: DeepSpeed zero_optimization.{option} (device={device}) is not "
                        "supported: the offloaded copies live outside the partitions the masks hold, so pruned entries "
                        f"would train; remove {option}")
    if getattr(args, "fsdp", None):
        version = int((getattr(args, "fsdp_config", None) or {}).get("version", 2))
        if version != 2:
            return (f"SparseAdapterCallback: TrainingArguments.fsdp_config version={version} (FSDP1) is not supported: "
                    "its flat parameters hide the tensors the masks name; use fsdp_config={'version': 2}")
    return None


def deepspeed_config(args) -> dict | None:
    """The DeepSpeed config dict of ``TrainingArguments`` (given as a dict or a JSON file), or None."""
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is not None and isinstance(getattr(hf_config, "config", None), dict):
        return hf_config.config
    given = getattr(args, "deepspeed", None)
    if isinstance(given, dict):
        return given
    if given:
        import json
        from pathlib import Path

        return json.loads(Path(given).read_text())
    return None


def trainer_sharded(args) -> bool:
    """Whether the Trainer shards or partitions the model (DeepSpeed, FSDP) before callbacks see it in training."""
    return bool(getattr(args, "deepspeed", None) or getattr(args, "fsdp", None))
