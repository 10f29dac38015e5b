"""bf16 mixed precision: what `auto` picks, and that masks, scores, optimizer state and files stay fp32-exact.

bf16-mixed trains under autocast with fp32 master weights; pruning scores are taken before any
step, outside autocast, so a bf16 run picks exactly the masks an fp32 run picks.
"""

from __future__ import annotations

import pytest
import torch

from sparse_adapter.io import read_adapter
from sparse_adapter.pruning import kept_count
from tasks import precision as precision_module
from tasks.precision import resolve_precision
from tests.test_cli import summary, train_in_process


def test_auto_picks_bf16_where_it_is_fast_and_fp32_elsewhere(monkeypatch):
    assert resolve_precision("32-true", "cpu") == "32-true" and resolve_precision("16-mixed", "gpu") == "16-mixed"
    monkeypatch.setitem(precision_module.FAST_BF16, "cpu", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setitem(precision_module.FAST_BF16, "cpu", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setitem(precision_module.FAST_BF16, "cuda", lambda: True)
    assert resolve_precision("auto", "gpu") == "bf16-mixed"


def test_this_machine_s_answer_follows_its_cpu_flags():
    fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if fast else "32-true")


def masks_of(run):
    return read_adapter(run / "adapter.safetensors")[1]


@pytest.mark.parametrize("overrides", [
    ["pruner=snip", "sparsity=0.5"],
    ["pruner=grasp", "adapter=lora", "sparsity=0.6"],
    ["pruner=synflow", "pruner.iterations=3", "adapter=parallel", "sparsity=0.5"],
    ["pruner=snip", "pruner.scope=nm", "sparsity=0.5", "adapter=pfeiffer"],
], ids=["snip-houlsby", "grasp-lora", "synflow-parallel", "nm-pfeiffer"])
def test_bf16_runs_pick_the_fp32_masks_and_hold_them_exactly(overrides, tmp_path, glue_dir):
    common = [f"data_dir={glue_dir}", "callbacks=resumable", *overrides]
    train_in_process(tmp_path / "fp32", *common, "trainer.precision=32-true")
    train_in_process(tmp_path / "bf16", *common, "trainer.precision=bf16-mixed")
    run = tmp_path / "bf16"
    s = summary(run)
    assert s["precision"] == "bf16-mixed" and s["budget"]["precision"] == "bf16-mixed"
    assert s["cpu_threads"] == torch.get_num_threads()  # the wall time's context
    assert s["adapter_weights_kept"] == kept_count(s["adapter_weights_total"], s["sparsity"])
    fp32, bf16 = masks_of(tmp_path / "fp32"), masks_of(run)
    assert set(fp32) == set(bf16) and all(torch.equal(fp32[n], bf16[n]) for n in fp32)  # scores were fp32
    tensors = read_adapter(run / "adapter.safetensors")[0]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    moments = adam_moments(checkpoint, set(tensors))
    for name, mask in bf16.items():
        assert tensors[name].dtype == torch.float32 and bool((tensors[name][~mask] == 0).all())
        assert checkpoint["state_dict"][f"model.{name}"].dtype == torch.float32  # fp32 master weights
        for moment in moments[name].values():
            assert moment.dtype == torch.float32 and bool((moment[~mask] == 0).all()), name


def adam_moments(checkpoint: dict, trained: set[str]) -> dict[str, dict[str, torch.Tensor]]:
    """name -> Adam's exp_avg/exp_avg_sq, by the optimizer's parameter order (tasks.optim: decayed first, then
    biases and norms, each in the model's parameter order)."""
    from tasks.optim import NO_DECAY

    names = [n.removeprefix("model.") for n in checkpoint["state_dict"] if n.removeprefix("model.") in trained]
    order = [n for n in names if not n.endswith(NO_DECAY)] + [n for n in names if n.endswith(NO_DECAY)]
    state = checkpoint["optimizer_states"][0]["state"]
    assert len(state) == len(order)
    return {name: {k: v for k, v in state[i].items() if k in ("exp_avg", "exp_avg_sq")} for i, name in enumerate(order)}


@pytest.mark.parametrize("task, extra", [("squad", ["backbone=tiny-bert", "data.max_length=128", "data.doc_stride=32"]),
                                         ("xsum", ["backbone=tiny-bart"])])
def test_qa_and_summarisation_run_in_bf16_with_fp32_scores(task, extra, tmp_path):
    from tests.conftest import data_dir

    found = data_dir()
    if found is None or not (__import__("pathlib").Path(found) / task).is_dir():
        pytest.skip(f"{task} files not found")
    common = [f"data_dir={found}", f"task={task}", *extra, "sparsity=0.5"]
    train_in_process(tmp_path / "fp32", *common, "trainer.precision=32-true")
    train_in_process(tmp_path / "bf16", *common, "trainer.precision=bf16-mixed")
    s = summary(tmp_path / "bf16")
    assert s["precision"] == "bf16-mixed" and all(isinstance(v, float) for v in s["metrics"].values())
    fp32, bf16 = masks_of(tmp_path / "fp32"), masks_of(tmp_path / "bf16")
    assert all(torch.equal(fp32[n], bf16[n]) for n in fp32)


def test_the_bf16_grid_is_the_claims_budget_in_bf16():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        bf16 = compose("train", overrides=["experiment=claims_bf16"], return_hydra_config=True)
        fp32 = compose("train", overrides=["experiment=claims_convergence"], return_hydra_config=True)
    assert bf16.trainer.precision == "bf16-mixed" and fp32.trainer.precision == "32-true"
    for key in ("optimizer.lr", "data.group_by_length", "trainer.max_epochs", "backbone.config", "data.batch_size"):
        assert OmegaConf.select(bf16, key) == OmegaConf.select(fp32, key), key
    assert str(bf16.hydra.sweeper.params.row) == "dense,snip" and str(bf16.hydra.sweeper.params.task) == "mrpc,stsb"


def test_compare_precision_pairs_jobs_by_row_task_and_seed(tmp_path):
    import importlib.util
    import json

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("compare_precision", ROOT / "benchmarks" / "compare_precision.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    jobs, table = compare.jobs, compare.table

    for folder, offset, seconds in (("fp32", 0.0, 400.0), ("bf16", 0.01, 250.0)):
        for seed in (42, 43, 44):
            run = tmp_path / folder / f"row=dense,seed={seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({
                "status": "complete", "row": "dense", "task": "mrpc", "seed": seed, "adapter": "houlsby", "pruner": "none",
                "sparsity": 0.0, "main_metric": "accuracy", "metrics": {"accuracy": 0.8 + offset + 0.001 * seed},
                "wall_seconds": seconds, "trained_params_pct": 1.0}))
    text = table(jobs(tmp_path / "fp32"), jobs(tmp_path / "bf16"))
    assert text.count("| dense | mrpc |") == 3 and "+1.0" in text and "1.60" in text and "reproduced" in text
