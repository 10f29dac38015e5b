"""NaN/Inf stop the run: an `error:` naming the step, exit 2, no summary, and no NaN in any file written."""

import threading

import json
import pytest
import torch

from sparse_adapter.errors import NumericalError
from sparse_adapter.io import write_json_atomic
from sparse_adapter.pruning import PrunerConfig, prune
from tests.cli_support import FAST, call_train, error_lines


def test_a_diverging_run_stops_with_an_error_naming_the_step(tmp_path, glue_dir, capsys):
    run = tmp_path / "run"
    code = call_train(
        *FAST, f"data_dir={glue_dir}", f"hydra.run.dir={run}", "optimizer.lr=1e6", "trainer.max_steps=20",
        "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=1",
    )
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1
    assert "training stopped at step" in lines[0] and "loss is nan" in lines[0] and "optimizer.lr" in lines[0]
    assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # the last finite state
    state = checkpoint["state_dict"]
    assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
    masks = {k.split("masks.", 1)[1].replace("__", "."): v for k, v in state.items() if k.startswith("masks.")}
    assert masks
    for name, mask in masks.items():
        assert torch.count_nonzero(state[f"model.{name}"][~mask]) == 0  # pruned entries exactly zero


def test_nan_scores_are_an_error_before_training():
    weight = torch.nn.Parameter(torch.randn(4, 4))

    def loss_fn(batch, temperature=1.0):
        return (weight * float("nan")).sum()

    with pytest.raises(NumericalError, match="pruner.scorer=snip: the scores of w hold NaN"):
        prune({"w": weight}, 0.5, PrunerConfig("snip", batches=1), loss_fn=loss_fn, batches=[None])


def test_concurrent_json_writers_never_publish_a_broken_file(tmp_path):
    """Unique temporary names: many writers of one summary.json leave a whole file and no temporaries."""
    path = tmp_path / "summary.json"
    payloads = [{"writer": i, "rows": list(range(2000))} for i in range(4)]
    errors = []

    def write(payload):
        try:
            for _ in range(25):
                write_json_atomic(payload, path)
        except Exception as error:  # a fixed temporary name fails here (replaced or truncated under us)
            errors.append(error)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert json.loads(path.read_text()) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
