"""Masks on DeepSpeed ZeRO's flat partitions: where ZeRO-2 and ZeRO-3 keep the trained weights and Adam's moments.

Under ZeRO the torch optimizer the Trainer built steps flat fp32 *partitions* (one per parameter group and rank),
not the model's parameters: ZeRO-2 flattens each group's parameters into one buffer (the parameters become views of
it), each rank updates its slice in an fp32 copy and the slices are all-gathered back; ZeRO-3 keeps only each
parameter's own slice (``param.ds_tensor``, rank r holds ``flat[r·n : (r+1)·n]`` of the padded parameter), flattened
per sub-group, with an fp32 copy the optimizer steps. A full mask per parameter (identical on every rank) is laid
out the same way, so one multiplication per partition masks the gradient before the inner step and the weights and
moments after it; ZeRO then copies the masked weights into the model's tensors. Offloaded or swapped partitions
(``offload_optimizer``, ``offload_param``) live outside these buffers and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Partitions = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (fp32 partition, model-dtype one, mask)
ZERO_OPTIMIZERS = {"DeepSpeedZeroOptimizer": 2, "DeepSpeedZeroOptimizer_Stage3": 3}


def zero_optimizer(optimizer):
    """The DeepSpeed ZeRO optimizer under wrappers (accelerate's ``DeepSpeedOptimizerWrapper``, the engine), or None."""
    return next((o for o in _chain(optimizer) if type(o).__name__ in ZERO_OPTIMIZERS), None)


def stage(zero) -> int:
    return ZERO_OPTIMIZERS[type(zero).__name__]


def problem(optimizer, zero) -> str | None:
    """Why masks cannot be held on this (DeepSpeed) optimizer, or None: an offloaded ZeRO, or a DeepSpeed optimizer
    whose state is not laid out as ZeRO's (BF16_Optimizer, FP16_Optimizer: stage 0 with half precision)."""
    if zero is not None:
        option = unsupported(zero)
        return None if option is None else (f"DeepSpeed {option} is not supported with masks: the offloaded copies"
                                            " live outside the partitions the masks hold (pruned entries would train)")
    for wrapped in _chain(optimizer):
        if type(wrapped).__module__.startswith("deepspeed") and not isinstance(wrapped, torch.optim.Optimizer):
            return (f"DeepSpeed's {type(wrapped).__name__} is not supported with masks (its flat state is not"
                    " ZeRO's); use zero_optimization.stage 1, 2 or 3")
    return None


def _chain(optimizer) -> list:
    found = []
    while optimizer is not None and len(found) < 8:
        found.append(optimizer)
        optimizer = getattr(optimizer, "optimizer", None)
    return found


def unsupported(zero) -> str | None:
    """The ZeRO option whose partitions these masks cannot reach, or None."""
    if stage(zero) == 2 and getattr(zero, "cpu_offload", False):
        return "zero_optimization.offload_optimizer"
    if stage(zero) == 3 and getattr(zero, "offload_optimizer", False):
        return "zero_optimization.offload_optimizer"
    if stage(zero) == 3 and getattr(zero, "offload_param", False):
        return "zero_optimization.offload_param"
    return None


def _offset(tensor: torch.Tensor, flat: torch.Tensor) -> int:
    """Where ``tensor`` (a view of ``flat``) starts in ``flat``, in elements."""
    offset, rest = divmod(tensor.data_ptr() - flat.data_ptr(), flat.element_size())
    if rest or not 0 <= offset <= flat.numel() - tensor.numel():
        raise RuntimeError("DeepSpeed partition layout changed: a parameter is not a view of its group's flat buffer")
    return offset


def _stage2_partitions(zero, masks: Mapping[torch.Tensor, torch.Tensor]) -> Partitions:
    import deepspeed.comm as dist

    found = []
    for index, (group, flat) in enumerate(zip(zero.round_robin_bit16_groups, zero.bit16_groups_flat)):
        held = [p for p in group if p in masks]
        if not held:
            continue
        flat_mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        for parameter in held:
            start = _offset(parameter, flat)
            flat_mask[start:start + parameter.numel()] = masks[parameter].reshape(-1).to(flat.device)
        mine = zero.parallel_partitioned_bit16_groups[index][dist.get_rank(group=zero.real_dp_process_group[index])]
        start = _offset(mine, flat)
        found.append((zero.single_partition_of_fp32_groups[index], mine, flat_mask[start:start + mine.numel()]))
    return found


def _stage3_partitions(zero, masks: Mapping[torch.Tensor, torch.Tensor]) -> Partitions:
    import deepspeed.comm as dist

    found = []
    groups = zip(zero.fp16_groups, zero.fp16_partitioned_groups_flat, zero.fp32_partitioned_groups_flat)
    for group, flat, fp32 in groups:
        held = [p for p in group if p in masks]
        if not held or flat is None:
            continue
        flat_mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        for parameter in held:
            shard = parameter.ds_tensor
            size, rank = shard.ds_numel, dist.get_rank(group=parameter.ds_process_group)
            full = torch.ones(size * dist.get_world_size(group=parameter.ds_process_group), dtype=torch.bool)
            full[:parameter.ds_numel] = masks[parameter].reshape(-1).cpu()
            start = _offset(shard, flat)
            flat_mask[start:start + size] = full[rank * size:(rank + 1) * size].to(flat.device)
        found.append((fp32, flat, flat_mask))
    return found


def partitions(zero, masks: Mapping[torch.Tensor, torch.Tensor]) -> Partitions:
    """(fp32 partition the inner optimizer steps, the model-dtype partition ZeRO copies it into, their bool mask) of
    this rank, one per group holding a masked parameter. ``masks``: parameter → full-shape bool mask."""
    return (_stage2_partitions if stage(zero) == 2 else _stage3_partitions)(zero, masks)


def full_shape(parameter: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, also under ZeRO-3 (whose partitioned parameters report an empty tensor)."""
    return tuple(getattr(parameter, "ds_shape", parameter.shape))
