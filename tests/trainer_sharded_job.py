"""One rank of a 2-process Hugging Face Trainer run with SparseAdapterCallback under DeepSpeed ZeRO-2/3 or FSDP2
(tests/test_trainer_sharded.py). Launched by torchrun on CPU (gloo).

    trainer_sharded_job.py <out> <mode>:<phase> ...      (mode: zero2, zero3, fsdp; phase: train, resume)

``train`` runs 4 steps with SNIP (checkpoints at 2 and 4); ``resume`` builds a new model, callback and Trainer and
continues from ``<out>/<mode>/checkpoint-4`` to step 6, with a callback that would prune at random with another
seed: equal masks mean they came from the checkpoint. Each rank then gathers every masked weight and its Adam
moments (full tensors, as one process would hold them) and writes ``<out>/<mode>/<phase>-rank<N>.pt``: the masks,
how many pruned entries are non-zero in each, the kept count and what the parameters were (DTensor, ZeRO-3).
All runs share one launch, to pay the start-up once.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from sparse_adapter.hf_trainer import SparseAdapterCallback  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

STEPS = {"train": 4, "resume": 6}


def sharding(mode: str) -> dict:
    if mode.startswith("zero"):
        import importlib

        import deepspeed

        # a CPU all-reduce speed-up DeepSpeed compiles on first use (minutes); gloo alone is enough here
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")  # before zero.Init partitions a model built under ZeRO-3
        return {"deepspeed": {"zero_optimization": {"stage": int(mode[-1])}, "train_micro_batch_size_per_gpu": "auto",
                              "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
                              "gradient_clipping": "auto"}}
    return {"fsdp": "full_shard", "fsdp_config": {"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}}


def force_fsdp_on_cpu(trainer) -> None:
    """accelerate turns FSDP on for accelerator devices only (on CPU its state stays MULTI_CPU and the plugin is
    dropped); set the state as it does on GPUs, so ``prepare`` runs ``fully_shard`` here with gloo."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


def gathered(model, optimizer, names) -> dict[str, list[torch.Tensor]]:
    """name → [weight, exp_avg, exp_avg_sq] as full tensors (every rank must call it)."""
    from sparse_adapter.zero import zero_optimizer

    named = dict(model.named_parameters())
    if zero_optimizer(optimizer) is not None:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        found = {}
        for name in names:
            p = named[name]
            found[name] = [safe_get_full_fp32_param(p), safe_get_full_optimizer_state(p, "exp_avg"),
                           safe_get_full_optimizer_state(p, "exp_avg_sq")]
        return found
    from sparse_adapter.distributed import full_tensor
    from sparse_adapter.hold import torch_optimizer

    state = torch_optimizer(optimizer).state
    return {n: [full_tensor(named[n].detach()), *(full_tensor(state[named[n]][k]) for k in ("exp_avg", "exp_avg_sq"))]
            for n in names}


def run(out: str, mode: str, phase: str) -> None:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (32, 16), generator=generator)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(16, dtype=torch.long), "labels": torch.tensor(i % 2)}
            for i in range(32)]
    out = f"{out}/{mode}"
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=STEPS[phase], learning_rate=5e-2,
                             weight_decay=0.1, report_to=[], save_strategy="steps", save_steps=2, use_cpu=True, seed=0,
                             disable_tqdm=True, ddp_backend="gloo", save_only_model=False, **sharding(mode))
    torch.manual_seed(0)  # built after the arguments: under ZeRO-3 the model is partitioned as it is built (zero.Init)
    model, _ = tiny_model("llama")
    model.config.pad_token_id = 0
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")
    model = get_peft_model(model, lora)
    partitioned_when_built = any(hasattr(p, "ds_id") for p in model.parameters())
    callback = (SparseAdapterCallback(sparsity=0.5, num_batches=2) if phase == "train"
                else SparseAdapterCallback(sparsity=0.5, pruner="random", seed=7))
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    if mode == "fsdp":
        force_fsdp_on_cpu(trainer)
    trainer.train(resume_from_checkpoint=f"{out}/checkpoint-4" if phase == "resume" else None)
    tensors = gathered(model, trainer.optimizer, sorted(callback.masks))
    nonzero = {n: [int(torch.count_nonzero(t.cpu()[~callback.masks[n]])) for t in ts] for n, ts in tensors.items()}
    moved = {n: bool(ts[0].abs().sum() > 0) for n, ts in tensors.items()}
    rank = torch.distributed.get_rank()
    some = dict(model.named_parameters())[next(iter(callback.masks))]
    kind = "ZeRO-3" if hasattr(some, "ds_tensor") else type(some).__name__
    kept = sum(int(m.sum()) for m in callback.masks.values())
    torch.save({"kind": kind, "partitioned_when_built": partitioned_when_built, "masks": callback.masks,
                "nonzero": nonzero, "kept": kept, "moved": moved,
                "world": torch.distributed.get_world_size(), "step": trainer.state.global_step,
                "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__},
               Path(out) / f"{phase}-rank{rank}.pt")
    if mode.startswith("zero"):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # the next run's model must not be built under this one's ZeRO-3


if __name__ == "__main__":
    for job in sys.argv[2:]:
        run(sys.argv[1], *job.split(":"))
