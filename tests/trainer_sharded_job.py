"""One rank of a 2-process Hugging Face Trainer run with SparseAdapterCallback under DeepSpeed ZeRO-2/3 or FSDP2
(tests/test_trainer_sharded.py). Launched by torchrun on CPU (gloo).

    trainer_sharded_job.py <zero2|zero3|fsdp> <out> <train|resume>

``train`` runs 4 steps (checkpoints at 2 and 4); ``resume`` continues from ``<out>/checkpoint-4`` to step 6. Each rank
then gathers every masked weight and its Adam moments (full tensors, as one process would hold them) and writes
``<out>/<phase>-rank<N>.pt``: the masks, how many pruned entries are non-zero in each, and the kept count.
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
        import deepspeed.comm.torch

        deepspeed.comm.torch.build_shm_op = lambda: None  # a CPU all-reduce speed-up compiled on first use (minutes)
        return {"deepspeed": {"zero_optimization": {"stage": int(mode[-1])}, "train_micro_batch_size_per_gpu": "auto",
                              "train_batch_size": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}}
    return {"fsdp": "full_shard", "fsdp_config": {"version": 2}}


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


def main(mode: str, out: str, phase: str) -> None:
    torch.manual_seed(0)
    model, _ = tiny_model("llama")
    model.config.pad_token_id = 0
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (32, 16), generator=generator)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(16, dtype=torch.long), "labels": torch.tensor(i % 2)}
            for i in range(32)]
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=STEPS[phase], learning_rate=5e-2,
                             weight_decay=0.1, report_to=[], save_strategy="steps", save_steps=2, use_cpu=True, seed=0,
                             disable_tqdm=True, ddp_backend="gloo", save_only_model=False, **sharding(mode))
    callback = SparseAdapterCallback(sparsity=0.5, num_batches=2)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=f"{out}/checkpoint-4" if phase == "resume" else None)
    tensors = gathered(model, trainer.optimizer, sorted(callback.masks))
    nonzero = {n: [int(torch.count_nonzero(t.cpu()[~callback.masks[n]])) for t in ts] for n, ts in tensors.items()}
    moved = {n: bool(ts[0].abs().sum() > 0) for n, ts in tensors.items()}
    rank = torch.distributed.get_rank()
    torch.save({"masks": callback.masks, "nonzero": nonzero, "kept": sum(int(m.sum()) for m in callback.masks.values()), "moved": moved,
                "world": torch.distributed.get_world_size(), "step": trainer.state.global_step,
                "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__},
               Path(out) / f"{phase}-rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
