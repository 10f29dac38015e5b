"""A run SIGKILLed anywhere resumes to the uninterrupted run bit for bit; settings that change the optimisation are
refused.

Step-limited (``trainer.max_steps``) on purpose: Lightning's fit loop treats such runs as restarting mid-epoch even
from an epoch-end checkpoint, counted the finished epoch twice and skipped the last epoch (issue 35: a 5-epoch,
400-step run resumed after step 320 ended at 320, 2.2e-2 apart) or dealt an epoch another epoch's data order.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_support import FAST, call_train, error_lines, train_subprocess

# 24 rows in batches of 4: 6 steps an epoch, 3 epochs but stopped by max_steps at step 15 (mid epoch 2);
# last.ckpt every 4 steps and at each epoch end: steps 4, 6, 8, 12, 15
RUN = [*FAST, "data.max_train_samples=24", "data.batch_size=4", "trainer.max_epochs=3", "trainer.max_steps=15",
       "seed=7",
       "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=4"]
# One run killed four times, each process resumed (or, with no checkpoint yet, rerun) from what the last one left:
# (kill point, KillAt where/step, the step of the last.ckpt it leaves; None: nothing saved)
KILLS = [
    ("during pruning's scoring", "scoring", 0, None),
    ("during validation", "validation", 6, 4),  # epoch 0's dev pass, steps 5-6 lost: resumes mid-epoch from step 4
    # epoch 1 ended at step 12; epoch 2, the last, was skipped (issue 35)
    ("after the epoch-end checkpoint", "step", 13, 12),
    ("during the closing dev scoring", "final_validation", 0, 15),  # trainer.validate after the last step
]


def kill_overrides(marker, where: str, step: int) -> list[str]:
    return ["+callbacks.kill._target_=tests.helpers.KillAt", f"+callbacks.kill.where={where}",
            f"+callbacks.kill.step={step}",
            f"+callbacks.kill.marker={marker}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, glue_dir):
    run = tmp_path_factory.mktemp("straight") / "run"
    assert call_train(*RUN, f"data_dir={glue_dir}", f"hydra.run.dir={run}") == 0
    return run


@pytest.fixture(scope="module")
def chain(tmp_path_factory, glue_dir):
    """The killed run after each kill ({point: a copy of its folder}) and, under "resumed", after the last resume.

    Every launch is ``python train.py`` in a new process; resumes use the documented ``resume=<run dir>``, given the
    kill callback again (a run folder's own ``_target_`` overrides are never replayed)."""
    root = tmp_path_factory.mktemp("chain")
    run, copies = root / "run", {}
    for number, (point, where, step, saved_at) in enumerate(KILLS):
        kill = kill_overrides(root / f"killed{number}", where, step)
        if (run / "checkpoints" / "last.ckpt").is_file():
            result = train_subprocess(f"resume={run}", *kill)
        else:
            result = train_subprocess(*RUN, f"data_dir={glue_dir}", *kill, f"hydra.run.dir={run}")
        assert result.returncode == -9, (point, result.stderr[-3000:])
        checkpoint = run / "checkpoints" / "last.ckpt"
        saved = torch.load(checkpoint, weights_only=True)["global_step"] if checkpoint.exists() else None
        assert saved == saved_at, point
        assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()
        copies[point] = root / f"after-{number}"
        shutil.copytree(run, copies[point])
    assert call_train(f"resume={run}", *kill) == 0
    copies["resumed"] = run
    return copies


def max_difference(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "adapter.safetensors"), load_file(b_dir / "adapter.safetensors")
    assert set(a) == set(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_weights_bit_for_bit(chain, straight):
    resumed = chain["resumed"]
    got, want = (json.loads((d / "summary.json").read_text()) for d in (resumed, straight))
    assert got["global_steps"] == want["global_steps"] == 15 and got["epochs"] == want["epochs"] == 3
    assert got["metrics"] == want["metrics"] and got["resume_changes"] == {}
    difference = max_difference(resumed, straight)
    print(f"max abs difference of the adapter weights after {len(KILLS)} kills: {difference}")
    assert difference == 0.0
    assert logged(resumed) == logged(straight)  # every value at the uninterrupted run's step (none one step late)


def test_a_run_folders_own_callback_override_is_refused_on_resume(chain, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(chain["during validation"], run)
    assert call_train(f"resume={run}") == 2  # its overrides.yaml names tests.helpers.KillAt: code, not replayed
    [line] = error_lines(capsys.readouterr().err)
    assert "+callbacks.kill._target_=tests.helpers.KillAt" in line and "never code" in line, line


def logged(run) -> list[tuple]:
    import csv

    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return [(int(row["step"]), key, float(value)) for row in csv.DictReader(handle)
                for key, value in sorted(row.items()) if value and key != "step" and not key.endswith("seconds")]


CHANGES = {  # an override that changes the optimisation → how the one error line names it
    "optimizer.lr=0.01": "optimizer.lr=0.001 (command line: 0.01)",
    "optimizer.warmup_ratio=0.2": "optimizer.warmup_ratio=0.1 (command line: 0.2)",
    "trainer.max_steps=30": "trainer.max_steps=15 (command line: 30)",
    "data.batch_size=8": "data.batch_size=4 (command line: 8)",
    "trainer.accumulate_grad_batches=2": "trainer.accumulate_grad_batches=1 (command line: 2)",
    "trainer.precision=bf16-mixed": "precision=32-true (command line: bf16-mixed)",
    "seed=8": "seed=7 (command line: 8)",
    "data.max_train_samples=20": "data.max_train_samples=24 (command line: 20)",
}


def inert_kill(tmp_path) -> list[str]:
    """The kill callback given again on resume, with its marker already there: it never fires."""
    (tmp_path / "spent").touch()
    return kill_overrides(tmp_path / "spent", "step", 0)


def test_a_resume_that_changes_the_optimisation_is_refused_naming_each_setting(chain, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(chain["during validation"], run)
    assert call_train(f"resume={run}", *inert_kill(tmp_path), *CHANGES) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert all(named in line for named in CHANGES.values()) and "resume_changes=[" in line, line
    assert "data.max_train_samples" in line.split("resume_changes=[")[1]  # the flag to use, with each name
    assert not (run / "summary.json").exists()


def test_resume_changes_allows_a_named_change_and_the_summary_records_it(chain, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(chain["during validation"], run)
    kill = inert_kill(tmp_path)
    assert call_train(f"resume={run}", *kill, "resume_changes=[sparsity]") == 2  # what the run is never changes
    assert "resume_changes: 'sparsity' cannot change" in error_lines(capsys.readouterr().err)[0]
    assert call_train(f"resume={run}", *kill, "optimizer.lr=0.002", "resume_changes=[optimizer.lr]") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resume_changes"] == {"optimizer.lr": {"checkpoint": 0.001, "now": 0.002}}
