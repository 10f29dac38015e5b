"""DDP on 2 CPU processes (gloo): identical masks and weights on every rank, metrics over the whole dev set,
and a run killed mid-epoch resumes to the uninterrupted run's weights."""

import json
import os
import signal
import time

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests import zygote
from tests.cli_support import train_subprocess
from tests.conftest import compose_config

DDP = [
    "backbone=tiny-bert", "task=rte", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1", "trainer.precision=32-true",
    "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
    "data.max_train_samples=32", "data.max_eval_samples=16", "data.batch_size=4", "pruner.batches=2", "data.group_by_length=true",
]


def single_process_validation(tmp_path, data_dir, weights, *overrides):
    """Dev metrics and sample table of ``weights`` (the trained ones; the random backbone is seeded), in this one process."""
    cfg = compose_config(*overrides)
    task = instantiate(cfg.task, _convert_="object")
    module = task.module_class()(
        backbone=instantiate(cfg.backbone, _convert_="object"), adapter=instantiate(cfg.adapter, _convert_="object"),
        optimizer=instantiate(cfg.optimizer, _convert_="object"), task=task,
    )
    module.model.load_state_dict(weights, strict=False)
    data = task.datamodule_class()(task=task, tokenizer=module.tokenizer, data_dir=data_dir, seed=cfg.seed, **cfg.data)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    return {k.removeprefix("val/"): v for k, v in metrics.items()}, module.sample_predictions


def assert_one_topology(folder) -> tuple[dict, dict, int]:
    """Both ranks' dumps hold the same masks and trained weights, 40% pruned exactly, pruned weights exactly zero."""
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["train_sampler"] for r in ranks] == ["ResumableSampler"] * 2  # dealt out by itself, not wrapped by Lightning
    zero, one = ranks
    assert zero["masks"].keys() == one["masks"].keys() and zero["masks"]
    for name in zero["masks"]:
        assert torch.equal(zero["masks"][name], one["masks"][name]), name
    for name in zero["weights"]:
        assert torch.equal(zero["weights"][name], one["weights"][name]), name
    kept = sum(int(m.sum()) for m in zero["masks"].values())
    total = sum(m.numel() for m in zero["masks"].values())
    assert kept == round(0.6 * total)
    for name, mask in zero["masks"].items():  # pruned weights stayed exactly zero
        assert torch.count_nonzero(zero["weights"][name][~mask]) == 0
    return zero, one, kept


def test_two_cpu_ranks_train_one_grasp_topology_and_report_whole_dev_set_metrics(tmp_path, glue_dir):
    """GraSP's Hessian-gradient product on each rank's own batches; SNIP's topology: the resumable run below."""
    result = train_subprocess(
        *DDP, "pruner=grasp", f"data_dir={glue_dir}", f"hydra.run.dir={tmp_path}",
        "+callbacks.dump._target_=tests.helpers.DumpRankState", f"+callbacks.dump.dirpath={tmp_path}", timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one, kept = assert_one_topology(tmp_path)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["adapter_weights_kept"] == kept and summary["global_steps"] == 3
    assert zero["metrics"] == one["metrics"]  # every rank reports the gathered metric, not its own half
    metrics, _ = single_process_validation(tmp_path, glue_dir, zero["weights"], "backbone=tiny-bert", "task=rte", "data.max_eval_samples=16")
    assert summary["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert summary["metrics"]["loss"] == pytest.approx(metrics["loss"], abs=1e-5)


FAMILIES = {  # 9 dev rows: Lightning's sampler repeats one so that both processes get 5
    "stsb": ["backbone=tiny-bert", "task=stsb"],
    "squad": ["backbone=tiny-bert", "task=squad", "data.max_length=128", "data.doc_stride=32"],
    "xsum": ["backbone=tiny-bart", "task=xsum", "data.max_length=128", "data.max_target_length=16", "task.max_new_tokens=8"],
}
METRICS = {"stsb": ("pearson", "spearman"), "squad": ("f1", "exact_match"), "xsum": ("rouge1", "rouge2", "rougeL")}


@pytest.mark.parametrize("family", FAMILIES)
def test_dev_metrics_count_every_dev_row_once_under_ddp(tmp_path, glue_dir, family):
    """Lightning's sampler repeats dev rows to even the processes' shares out. STS-B's correlations are gathered by
    torchmetrics; QA and summaries score collected outputs (spans, summaries), which must be merged at all, or each
    rank reports a metric over its own half. Either way every dev row must count once, as on one process."""
    data = [*FAMILIES[family], "data.max_eval_samples=9", "data.eval_batch_size=2", "data.group_by_length=true"]
    result = train_subprocess(
        *DDP, *data, "data.batch_size=2", "pruner=none", f"data_dir={glue_dir}", f"hydra.run.dir={tmp_path}",
        "+callbacks.dump._target_=tests.helpers.DumpRankState", f"+callbacks.dump.dirpath={tmp_path}", timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert zero["metrics"] == one["metrics"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics, samples = single_process_validation(tmp_path, glue_dir, zero["weights"], *data)
    for name in METRICS[family]:  # float32 forward passes over batches padded otherwise: 1e-6 apart (one repeated row: 3e-2)
        assert summary["metrics"][name] == pytest.approx(metrics[name], abs=1e-5), name
    if family != "stsb":  # the first 8 dev rows, from both processes, in dev order
        assert summary["samples"] == samples and len(samples) == 8


# 16 rows in batches of 2 on 2 ranks: 4 steps an epoch, 2 epochs; last.ckpt every 2 steps. Dropout is on and the
# ranks' batches differ in length, so each rank's RNG must come back as its own.
RESUMABLE_DDP = [
    *(o for o in DDP if not o.startswith(("trainer.max_steps", "trainer.max_epochs", "data.max_train_samples", "data.batch_size"))),
    "trainer.max_steps=-1", "trainer.max_epochs=2", "data.max_train_samples=16", "data.batch_size=2", "pruner=snip",
    "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=2", "+callbacks.dump._target_=tests.helpers.DumpRankState",
]


def ddp_run(glue_dir, folder, *extra):
    return train_subprocess(*RESUMABLE_DDP, f"data_dir={glue_dir}", f"hydra.run.dir={folder}", f"+callbacks.dump.dirpath={folder}",
                            *extra, timeout=400)


def resume_callbacks(folder) -> list[str]:
    """The test-only callback overrides, given again on resume: a run folder's ``_target_`` overrides are never replayed."""
    return [*(o for o in RESUMABLE_DDP if o.startswith("+callbacks.")), f"+callbacks.dump.dirpath={folder}"]


@pytest.fixture(scope="module")
def ddp_straight(tmp_path_factory, glue_dir):
    """The resumable 2-process run, never interrupted."""
    straight = tmp_path_factory.mktemp("ddp") / "straight"
    assert ddp_run(glue_dir, straight).returncode == 0
    return straight


def assert_same_ddp_run(resumed, straight):
    """Each run holds one SNIP topology on both ranks, and the resumed run ends at the straight one's weights."""
    for run in (resumed, straight):
        assert_one_topology(run)
    got, want = json.loads((resumed / "summary.json").read_text()), json.loads((straight / "summary.json").read_text())
    assert got["global_steps"] == want["global_steps"] == 8 and got["resumed_from"]
    for rank in (0, 1):
        a, b = (torch.load(folder / f"rank{rank}.pt", weights_only=True) for folder in (resumed, straight))
        for name in b["weights"]:
            torch.testing.assert_close(a["weights"][name], b["weights"][name], atol=1e-6, rtol=0, msg=f"rank {rank}: {name}")
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)


def test_two_ranks_stopped_by_sigterm_then_killed_resume_to_the_uninterrupted_weights(tmp_path, glue_dir, ddp_straight):
    """One run, stopped twice (a 2-process launch each; one chain instead of two runs saves a launch).

    1. Only rank 0 gets SIGTERM at step 3: the ranks agree at the step boundary, save one checkpoint together, exit 143.
    2. The resume continues epoch 0 after batch 3 on both ranks and is SIGKILLed at step 7: its last.ckpt is from
       step 6, half-way through epoch 1.
    3. The second resume continues epoch 1 after batch 2 and ends at the uninterrupted run's weights, rank by rank."""
    run, marker = tmp_path / "signalled", tmp_path / "at-step"
    wait = ["+callbacks.wait._target_=tests.helpers.WaitForSignalAtStep", "+callbacks.wait.step=3",
            f"+callbacks.wait.marker={marker}"]
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7",
            f"+callbacks.kill.marker={tmp_path / 'killed.marker'}"]
    argv = [*RESUMABLE_DDP, f"data_dir={glue_dir}", f"hydra.run.dir={run}", f"+callbacks.dump.dirpath={run}",
            *wait, *kill]
    process = zygote.ForkedProcess("train.py", argv, dict(os.environ, **zygote.BASE_ENV))
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)  # rank 0 only (the launching process)
    _, stderr = process.communicate(timeout=200)
    assert process.returncode == 143, stderr[-3000:]
    assert f"interrupted at step 3 by SIGTERM; resume with: python train.py resume={run.resolve()}" in stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run / "summary.json").exists()

    # a folder's _target_s are not replayed: the test callbacks are given again
    killed = train_subprocess(f"resume={run}", *resume_callbacks(run), *wait, *kill, timeout=400)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    resumed = train_subprocess(f"resume={run}", *resume_callbacks(run), *wait, *kill, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for log in ("train.log", "train_ddp_process_1.log"):  # each rank's log
        text = (run / log).read_text()
        assert "resume: epoch 0 continues after batch 3" in text and "resume: epoch 1 continues after batch 2" in text
    assert_same_ddp_run(run, ddp_straight)