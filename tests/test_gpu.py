"""CUDA paths (marked `gpu`; skipped without a GPU): fp16 with GradScaler skipping steps, bf16, GraSP on CUDA.

`scripts/gpu_check.sh` runs these on a lent GPU. Masks must hold through steps the scaler skips
(an overflowing step calls no optimizer step, so no post-step hook runs: the weights must still be
exactly zero where pruned, which they are because nothing moved them).
"""

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.pruning import PrunerConfig
from tests.test_training import build, pruned_state, trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def held(module, optimizer):
    for parameter, mask in pruned_state(module):
        mask = mask.to(parameter.device)
        assert torch.count_nonzero(parameter[~mask]) == 0
        state = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.count_nonzero(state[key][~mask]) == 0


def test_fp16_gradscaler_skipped_steps_keep_the_masks(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)  # the first steps overflow and are skipped
    plugin = MixedPrecision("16-mixed", "cuda", scaler=scaler)
    fit = trainer(tmp_path, [PruneAtInit(PrunerConfig("snip", batches=2), 0.6), MaskEnforcement()],
                  accelerator="gpu", devices=1, plugins=[plugin], max_steps=40)
    fit.fit(module, datamodule=data)
    assert scaler.get_scale() < 2.0**40  # some steps were skipped and the scale came down
    held(module, fit.optimizers[0])


@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_bf16_mixed_on_cuda_keeps_masks_and_scores_in_fp32(tmp_path, rte_task, glue_dir, scorer):
    module, data = build(rte_task, glue_dir)
    fit = trainer(tmp_path, [PruneAtInit(PrunerConfig(scorer, batches=2), 0.5), MaskEnforcement()],
                  accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=20)
    fit.fit(module, datamodule=data)
    assert module.masks.kept() == round(0.5 * module.masks.total())
    assert all(p.dtype == torch.float32 for p, _ in pruned_state(module))
    held(module, fit.optimizers[0])


def test_grasp_on_cuda_matches_grasp_on_cpu(tmp_path, rte_task, glue_dir):
    masks = {}
    for device in ("cpu", "gpu"):
        module, data = build(rte_task, glue_dir)
        fit = trainer(tmp_path / device, [PruneAtInit(PrunerConfig("grasp", batches=2), 0.5)], accelerator=device, devices=1,
                      max_steps=1)
        fit.fit(module, datamodule=data)
        masks[device] = {n: m.cpu() for n, m in module.masks.items()}
    agree = sum(int((masks["cpu"][n] == masks["gpu"][n]).sum()) for n in masks["cpu"])
    total = sum(m.numel() for m in masks["cpu"].values())
    assert agree / total > 0.99  # float reductions differ across devices; near-ties may flip
