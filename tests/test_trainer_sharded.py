"""SparseAdapterCallback in the Hugging Face Trainer sharded: accelerate's FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 on
2 CPU processes (gloo). One launch trains each setup 4 steps and resumes it from its checkpoint in a new model,
callback and Trainer (tests/trainer_sharded_job.py); the gathered weights and Adam moments must hold the masks
exactly, and the resumed masks must be the checkpoint's, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sparse_adapter.errors import ConfigError
from sparse_adapter.mask_files import MASKS_FILE, read_masks
from tests.conftest import ROOT

SETUPS = {"fsdp": ("DTensor", "AdamW"), "zero2": ("Parameter", "DeepSpeedZeroOptimizer"),
          "zero3": ("ZeRO-3", "DeepSpeedZeroOptimizer_Stage3")}


def test_masks_are_held_exactly_under_fsdp2_zero2_and_zero3_and_restored_on_resume(tmp_path):
    pytest.importorskip("deepspeed")
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    jobs = [f"{mode}:{phase}" for mode in SETUPS for phase in ("train", "resume")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
               str(ROOT / "tests" / "trainer_sharded_job.py"), str(tmp_path), *jobs]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    for mode, (kind, optimizer) in SETUPS.items():
        runs = {phase: [torch.load(tmp_path / mode / f"{phase}-rank{r}.pt", weights_only=True) for r in (0, 1)]
                for phase in ("train", "resume")}
        masks = runs["train"][0]["masks"]
        total = sum(m.numel() for m in masks.values())
        saved = read_masks(tmp_path / mode / "checkpoint-4" / MASKS_FILE)
        assert saved.keys() == masks.keys() and all(torch.equal(saved[n], masks[n]) for n in masks), mode
        for phase, steps in (("train", 4), ("resume", 6)):
            for rank in runs[phase]:
                setup = (rank["world"], rank["step"], rank["kind"], rank["optimizer"])
                assert setup == (2, steps, kind, optimizer), mode
                assert rank["partitioned_when_built"] == (mode == "zero3")  # ZeRO-3 scored on gathered parameters
                assert rank["masks"].keys() == masks.keys()
                assert all(torch.equal(rank["masks"][n], masks[n]) for n in masks)
                assert rank["kept"] == total // 2  # exact-k at s = 0.5
                # gathered weight, exp_avg, exp_avg_sq: no pruned entry moved; the kept ones trained
                assert all(counts == [0, 0, 0] for counts in rank["nonzero"].values()), (mode, phase, rank["nonzero"])
                assert all(rank["moved"][n] for n in masks if masks[n].any()), (mode, phase)


@pytest.mark.parametrize("setting, expected", [
    (dict(deepspeed={"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                     "train_micro_batch_size_per_gpu": "auto"}),
     "SparseAdapterCallback: DeepSpeed zero_optimization.offload_optimizer (device=cpu) is not supported"),
    (dict(deepspeed={"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}},
                     "train_micro_batch_size_per_gpu": "auto"}),
     "SparseAdapterCallback: DeepSpeed zero_optimization.offload_param (device=cpu) is not supported"),
    (dict(fsdp="full_shard", fsdp_config={"version": 1}),
     "SparseAdapterCallback: TrainingArguments.fsdp_config version=1 (FSDP1) is not supported"),
    (dict(deepspeed={"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}),
     "SparseAdapterCallback: under DeepSpeed or FSDP it scores before the model is sharded"),
])
def test_the_trainer_callback_refuses_what_it_cannot_hold_exactly(setting, expected, tmp_path):
    pytest.importorskip("deepspeed")
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from sparse_adapter.hf_trainer import SparseAdapterCallback
    from tests.conftest import tiny_model

    model, _ = tiny_model()  # before the arguments: a ZeRO-3 config would partition it as it is built
    try:
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **setting)
        with pytest.raises(ConfigError) as error:  # the last: added after Trainer.__init__, it never scored
            SparseAdapterCallback().on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    finally:  # TrainingArguments(deepspeed=...) registers a process-wide config: later tests must not see ZeRO
        unset_hf_deepspeed_config()
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
