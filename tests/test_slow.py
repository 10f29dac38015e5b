"""Slow: the pretrained MiniLM on real RTE rows, briefly, through train.py."""

import json

import pytest

from tests.test_cli import train


@pytest.mark.slow
def test_minilm_trains_on_rte(tmp_path, glue_dir):
    fast = ["trainer=smoke", "trainer.max_steps=12", "logger=csv", "data.max_train_samples=192",
            "data.max_eval_samples=96", "data.batch_size=16", "data.max_length=96", "pruner.batches=2"]
    result = train(tmp_path, f"data_dir={glue_dir}", "optimizer.lr=1e-3", fast=fast)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backbone"] == "minilm" and summary["global_steps"] == 12
    assert summary["adapter_weights_total"] == 6 * 2 * 2 * 384 * 64  # 6 blocks, 2 adapters, down + up
    assert summary["adapter_weights_kept"] == round(0.6 * summary["adapter_weights_total"])
    assert 0.3 <= summary["metrics"]["accuracy"] <= 0.8  # a real (if short) run on real rows
    assert 1.0 < summary["trained_params_pct"] < 5.0  # the paper's #Param column, MiniLM scale
