"""trainer=fsdp: FSDP2 through Lightning's ModelParallelStrategy on 2 CPU processes (gloo).

One sharded launch trains 10 steps and is compared with a one-process run of the same seed and global batch (masks
equal, weights within 1e-5); a second launch resumes its full checkpoint and must restore the masks bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_adapter.errors import ConfigError
from sparse_adapter.io import read_adapter
from tests.cli_support import call_train, error_lines, train_subprocess
from tests.test_cli import summary, train_in_process

RUN = ["backbone=tiny-llama", "adapter=lora", "adapter.r=2", "task=rte", "pruner=snip", "pruner.batches=1", "logger=csv",
       "trainer.max_epochs=10", "trainer.max_steps=10", "trainer.precision=32-true", "data.max_train_samples=8",
       "data.max_eval_samples=4", "data.max_length=32"]
SHARDED = [*RUN, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.batch_size=4",
           "callbacks=resumable"]


def records(run_dir):
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def check_shards(run_dir, steps: int) -> None:
    ranks = records(run_dir)
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["global_step"] == ranks[1]["global_step"] >= steps
    for rank in ranks:
        assert rank["rows"]
        for row in rank["rows"]:  # parameters and masks sharded alike on dim 0; pruned entries zero on the shard
            assert row["parameter"] == row["mask"] == "DTensor" and row["placements"] == row["mask_placements"] == "(Shard(dim=0),)"
            assert row["local_shape"][0] < row["shape"][0] and row["zero"] and row["moments"] == 2, row


def test_fsdp_on_two_cpu_ranks_equals_one_process_and_resumes_its_masks(tmp_path, glue_dir):
    sharded, single, resumed = tmp_path / "fsdp", tmp_path / "single", tmp_path / "resumed"
    record = ["+callbacks.shards._target_=tests.sharding_helpers.RecordShards"]
    result = train_subprocess(*SHARDED, f"data_dir={glue_dir}", f"hydra.run.dir={sharded}", *record,
                              f"+callbacks.shards.dirpath={sharded}", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    check_shards(sharded, 10)
    train_in_process(single, *RUN, "trainer=smoke", "data.batch_size=8", f"data_dir={glue_dir}")  # the same rows per step
    weights, masks, _ = read_adapter(sharded / "adapter.safetensors")
    reference, reference_masks, _ = read_adapter(single / "adapter.safetensors")
    assert masks and masks.keys() == reference_masks.keys() and weights.keys() == reference.keys()
    assert all(torch.equal(masks[n], reference_masks[n]) for n in masks)
    assert max(float((weights[n] - reference[n]).abs().max()) for n in weights) <= 1e-5
    assert summary(sharded)["adapter_weights_kept"] == summary(single)["adapter_weights_kept"]

    result = train_subprocess(*SHARDED, "trainer.max_steps=12", "trainer.max_epochs=12", f"data_dir={glue_dir}",
                              "resume_changes=[trainer.max_steps,trainer.max_epochs]",
                              f"ckpt_path={sharded}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}", *record,
                              f"+callbacks.shards.dirpath={resumed}", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "masks restored from the checkpoint" in result.stdout + result.stderr
    check_shards(resumed, 11)  # (a resume from an epoch-end checkpoint counts as on one process: 11 here too)
    again, again_masks, _ = read_adapter(resumed / "adapter.safetensors")
    assert again_masks.keys() == masks.keys() and all(torch.equal(again_masks[n], masks[n]) for n in masks)
    assert all(torch.count_nonzero(again[n][~again_masks[n]]) == 0 for n in again_masks)


def test_fsdp_with_one_device_is_one_error_line(tmp_path, capsys):
    assert call_train("backbone=tiny-llama", "adapter=lora", "trainer=fsdp", "trainer.devices=1", f"hydra.run.dir={tmp_path}") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: trainer=fsdp with trainer.devices=1"), lines


def test_fsdp_with_a_quantized_backbone_is_one_error_line(tmp_path, capsys):
    assert call_train("backbone=tiny-llama", "adapter=lora", "trainer=fsdp", "backbone.quantization=nf4", f"hydra.run.dir={tmp_path}") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: trainer=fsdp with backbone.quantization=nf4"), lines


def test_a_model_without_named_blocks_cannot_be_sharded():
    from sparse_adapter.distributed import blocks

    with pytest.raises(ConfigError, match="trainer=fsdp: cannot find the transformer blocks of 'Sequential'"):
        blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
