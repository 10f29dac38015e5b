"""Lightning training with PruneAtInit and MaskEnforcement on a tiny model and real GLUE rows."""

import lightning as L
import pytest
import torch

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.adapters import HoulsbyConfig, LoRAConfig
from sparse_adapter.pruning import PrunerConfig
from tasks.classification import ClassificationModule, GlueDataModule
from tasks.optim import AdamWConfig
from tests.conftest import tiny_backbone


def build(task, glue_dir, adapter=None, attn="sdpa", samples=16, batch_size=4):
    L.seed_everything(0)
    module = ClassificationModule(tiny_backbone("bert", attn), adapter or HoulsbyConfig(bottleneck=8), AdamWConfig(lr=1e-2), task)
    data = GlueDataModule(task, module.tokenizer, data_dir=glue_dir, max_length=32, batch_size=batch_size, max_train_samples=samples, max_eval_samples=8)
    return module, data


def trainer(tmp_path, callbacks, **options):
    settings = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    settings.update(options)
    return L.Trainer(callbacks=callbacks, **settings)


def pruned_state(module):
    named = dict(module.model.named_parameters())
    return [(named[n], m) for n, m in module.masks.items()]


def test_pruned_weights_and_adam_state_stay_exactly_zero(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir)
    initial = {n: p.detach().clone() for n, p in module.prunable_parameters().items()}
    fit = trainer(tmp_path, [PruneAtInit(PrunerConfig("snip", batches=2), 0.6), MaskEnforcement()], max_steps=210)
    fit.fit(module, datamodule=data)
    assert fit.global_step == 210
    optimizer = fit.optimizers[0]
    assert optimizer.defaults["weight_decay"] == 0.1 or any(g["weight_decay"] == 0.1 for g in optimizer.param_groups)
    assert module.masks.kept() == round(0.4 * module.masks.total())
    for parameter, mask in pruned_state(module):
        assert torch.count_nonzero(parameter[~mask]) == 0
        state = optimizer.state[parameter]
        assert torch.count_nonzero(state["exp_avg"][~mask]) == 0
        assert torch.count_nonzero(state["exp_avg_sq"][~mask]) == 0
        assert not torch.equal(parameter[mask], initial_kept(initial, module, parameter, mask))  # kept ones train


def initial_kept(initial, module, parameter, mask):
    name = next(n for n, p in module.prunable_parameters().items() if p is parameter)
    return initial[name][mask]


def test_gradient_accumulation_masks_on_optimizer_steps(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir)
    enforcement = MaskEnforcement()
    calls = []
    original = enforcement._after_step
    enforcement._after_step = lambda optimizer, pl_module: (calls.append(1), original(optimizer, pl_module))
    fit = trainer(tmp_path, [PruneAtInit(PrunerConfig("magnitude"), 0.5), enforcement], max_steps=6, accumulate_grad_batches=2)
    fit.fit(module, datamodule=data)
    assert len(calls) == fit.global_step == 6  # once per optimizer step, not per batch
    for parameter, mask in pruned_state(module):
        assert torch.count_nonzero(parameter[~mask]) == 0


def test_scoring_leaves_no_gradient_and_keeps_data_order(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir)
    pruning = PruneAtInit(PrunerConfig("snip", batches=3), 0.4)

    class FirstBatch(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            self.grads = [p.grad for p in pl_module.parameters()]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.first_ids = batch["input_ids"].clone()

    probe = FirstBatch()
    trainer(tmp_path, [pruning, MaskEnforcement(), probe], max_steps=1).fit(module, datamodule=data)
    assert all(g is None for g in probe.grads)

    dense, dense_data = build(rte_task, glue_dir)
    dense_probe = FirstBatch()
    trainer(tmp_path, [PruneAtInit(PrunerConfig(None), 0.0), MaskEnforcement(), dense_probe], max_steps=1).fit(dense, datamodule=dense_data)
    assert torch.equal(probe.first_ids, dense_probe.first_ids)  # scoring did not shift the shuffle


def test_grasp_through_the_frozen_backbone_restores_sdpa(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir, adapter=LoRAConfig(r=4))
    assert module.model.config._attn_implementation == "sdpa"
    trainer(tmp_path, [PruneAtInit(PrunerConfig("grasp", batches=2), 0.75), MaskEnforcement()], max_steps=2).fit(module, datamodule=data)
    assert module.masks.kept() == round(0.25 * module.masks.total())
    assert module.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("scorer, scope", [("random", "er"), ("magnitude", "layer"), ("snip", "global")])
def test_pruners_in_training(tmp_path, stsb_task, glue_dir, scorer, scope):
    module, data = build(stsb_task, glue_dir)
    trainer(tmp_path, [PruneAtInit(PrunerConfig(scorer, scope=scope, batches=1), 0.2), MaskEnforcement()], max_steps=2).fit(module, datamodule=data)
    assert module.masks.kept() == round(0.8 * module.masks.total())


def test_resume_restores_masks_bit_for_bit_without_pruning(tmp_path, rte_task, glue_dir):
    module, data = build(rte_task, glue_dir)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer(tmp_path, [PruneAtInit(PrunerConfig("snip", batches=2), 0.4), MaskEnforcement(), checkpoint],
            max_steps=4, enable_checkpointing=True).fit(module, datamodule=data)
    saved = {n: m.clone() for n, m in module.masks.items()}

    resumed, resumed_data = build(rte_task, glue_dir)
    assert len(resumed.masks) == 0
    pruning = PruneAtInit(PrunerConfig("random", batches=2), 0.9, seed=123)  # would give other masks
    fit = trainer(tmp_path, [pruning, MaskEnforcement()], max_steps=8)
    fit.fit(resumed, datamodule=resumed_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert fit.global_step == 8 and pruning.seconds == 0.0
    assert set(saved) == set(dict(resumed.masks.items()))
    for name, mask in resumed.masks.items():
        assert mask.dtype == torch.bool and torch.equal(mask, saved[name])
    for parameter, mask in pruned_state(resumed):
        assert torch.count_nonzero(parameter[~mask]) == 0


def test_how_often_the_dev_set_is_evaluated_does_not_change_training(tmp_path, rte_task, glue_dir):
    """The claims grid evaluates only its convergence rows every quarter epoch: that must not move the others."""
    trained = []
    for interval in (0.25, 1.0):
        module, data = build(rte_task, glue_dir)  # dropout on: an RNG draw by a dev pass would shift it
        fit = trainer(tmp_path, [PruneAtInit(PrunerConfig("snip", batches=2), 0.4), MaskEnforcement()], max_epochs=2,
                      limit_val_batches=None, num_sanity_val_steps=2, val_check_interval=interval)
        fit.fit(module, datamodule=data)
        trained.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][n], trained[1][n]) for n in trained[0])


@pytest.mark.parametrize("total_steps, warmup_ratio", [(100, 0.1), (37, 0.1), (10, 0.0), (5, 0.5), (1, 0.1)])
def test_the_schedule_is_transformers_linear_warmup_with_the_lrs_it_always_had(total_steps, warmup_ratio):
    """tasks.optim builds on transformers' get_linear_schedule_with_warmup and gives, step by step, the lrs of the
    hand-written schedule it replaced: (s + 1)/(w + 1) of the peak during warm-up, then linear decay to 0."""
    from torch import nn

    def hand_written(step: int, warmup: int) -> float:  # the replaced tasks.optim schedule, verbatim
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    model = nn.Linear(3, 2)
    built = AdamWConfig(lr=2e-3, warmup_ratio=warmup_ratio).build(model, total_steps)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    warmup = int(warmup_ratio * total_steps)
    seen = []
    for step in range(total_steps + 2):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    want = [[pytest.approx(2e-3 * hand_written(step, warmup), rel=1e-12, abs=1e-15)] * 2 for step in range(total_steps + 2)]
    assert seen == want
    assert scheduler.state_dict()["last_epoch"] == total_steps + 2  # the step count checkpoints always held
