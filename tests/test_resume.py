"""Runs that survive a SIGKILL: resume from the run directory to the uninterrupted result; refuse other settings."""

import csv
import fcntl
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tasks.loggers import RUN_FOLDER
from tests.cli_support import FAST, call_train, error_lines, train_subprocess

# 24 rows in batches of 4: 6 steps an epoch, 3 epochs; last.ckpt every 4 steps and at each epoch end
RESUMABLE = [
    *FAST, "data.max_train_samples=24", "data.batch_size=4", "trainer.max_steps=-1", "trainer.max_epochs=3",
    "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=4",
]
KILL_STEP = 9  # mid epoch 1, one step after the step-8 checkpoint


def kill_args(root, step: int = KILL_STEP) -> list[str]:
    """The kill callback's overrides; given again on resume (a run folder's ``_target_`` overrides are never replayed),
    where its marker is already there, so it never fires twice."""
    return ["+callbacks.kill._target_=tests.helpers.KillAtStep", f"+callbacks.kill.step={step}", f"+callbacks.kill.marker={root / 'killed'}"]


def kill_at(root, glue_dir, step: int, *extra: str):
    """A run SIGKILLed when it reaches ``step``: no summary, no adapter, a whole last.ckpt."""
    kill = kill_args(root, step)
    result = train_subprocess(*RESUMABLE, f"data_dir={glue_dir}", *kill, f"hydra.run.dir={root / 'run'}", *extra)
    assert result.returncode == -9, result.stderr[-3000:]
    run = root / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()
    assert not list((run / "checkpoints").glob("*.tmp"))
    return run


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, glue_dir):
    """Killed at step 9, mid epoch 1: its last.ckpt is from step 8, two batches into the epoch."""
    return kill_at(tmp_path_factory.mktemp("killed"), glue_dir, KILL_STEP)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, glue_dir):
    """The same run, never interrupted."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert call_train(*RESUMABLE, f"data_dir={glue_dir}", f"hydra.run.dir={run}") == 0
    return run


def test_killed_run_resumes_to_the_uninterrupted_weights_and_metric(killed_run, straight, tmp_path):
    resumed = tmp_path / "row=snip,seed=42"  # a sweep job's folder: '=' and ',' are Hydra syntax unless quoted
    shutil.copytree(killed_run, resumed)
    result = train_subprocess(f"resume={resumed}", *kill_args(killed_run.parent))  # the documented command (+ the test's callback)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataloader is not resumable" not in result.stderr  # it is: RunState restarts the sampler mid-epoch
    assert_same_run(resumed, straight)
    assert logged(resumed) == logged(straight)  # the learning curve from step 0, each step once
    summary = json.loads((resumed / "summary.json").read_text())
    before_kill = torch.load(killed_run / "checkpoints" / "last.ckpt", weights_only=True)["sparse_adapter"]["seconds"]
    assert summary["wall_seconds"] == pytest.approx(before_kill + summary["wall_seconds_this_process"], abs=1.0)  # both pieces


def test_a_resumed_run_continues_its_wandb_run(tmp_path, glue_dir):
    run = kill_at(tmp_path, glue_dir, KILL_STEP, "logger=many")  # CSV and W&B (offline)
    [interrupted] = (run / "wandb").glob("offline-run-*")
    result = train_subprocess(f"resume={run}", *kill_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and {RUN_FOLDER.fullmatch(f.name)[2] for f in folders} == {RUN_FOLDER.fullmatch(interrupted.name)[2]}
    resumed = next(f for f in folders if f != interrupted)
    assert b"adapter_weights_kept" in b"".join(p.read_bytes() for p in resumed.glob("run-*.wandb"))  # the summary went there


def test_killed_after_an_epoch_end_checkpoint_resumes_at_the_next_epoch(tmp_path, straight, glue_dir):
    run = kill_at(tmp_path, glue_dir, 7)  # last.ckpt from the end of epoch 0 (step 6)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["sparse_adapter"]["epoch_done"]
    assert call_train(f"resume={run}", *kill_args(tmp_path, 7)) == 0
    assert_same_run(run, straight)


def logged(run) -> list[tuple]:
    """(step, metric, value to 4 decimals) of every value in the run's CSV log, in file order (timings left out)."""
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return [(int(row["step"]), key, round(float(value), 4)) for row in csv.DictReader(handle)
                for key, value in sorted(row.items()) if value and key != "step" and not key.endswith("seconds")]


def assert_same_run(resumed, straight):
    got, want = json.loads((resumed / "summary.json").read_text()), json.loads((straight / "summary.json").read_text())
    assert got["global_steps"] == want["global_steps"] == 18
    assert got["resumed_from"].endswith("last.ckpt") and want["resumed_from"] is None
    assert got["metrics"]["accuracy"] == want["metrics"]["accuracy"]
    assert got["metrics"]["loss"] == pytest.approx(want["metrics"]["loss"], abs=1e-6)
    assert (got["pruner"], got["sparsity"], got["layer_density"]) == (want["pruner"], want["sparsity"], want["layer_density"])
    a, b = load_file(resumed / "adapter.safetensors"), load_file(straight / "adapter.safetensors")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(
    "override, named",
    [
        ("sparsity=0.8", "sparsity=0.4 (command line: 0.8)"),
        ("pruner=random", "pruner=snip (command line: random)"),
        ("pruner=none", "pruner=snip (command line: none)"),
        ("pruner.scope=layer", "scope=global (command line: layer)"),
        ("seed=7", "seed=42 (command line: 7)"),
        ("adapter.bottleneck=16", "adapter.bottleneck=64 (command line: 16)"),
        ("adapter=lora", "adapter=houlsby (command line: lora)"),
        ("task=mrpc", "task=rte (command line: mrpc)"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(killed_run, tmp_path, capsys, override, named):
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    assert call_train(f"resume={run}", *kill_args(killed_run.parent), override) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and named in lines[0] and "ckpt_path" in lines[0]
    assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()


def test_a_dense_checkpoint_is_never_pruned_on_resume(tmp_path, glue_dir, capsys):
    run = tmp_path / "dense"
    dense = [*RESUMABLE, f"data_dir={glue_dir}", "pruner=none", "trainer.max_epochs=1"]
    assert call_train(*dense, f"hydra.run.dir={run}") == 0
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    (run / "adapter.safetensors").unlink()
    assert call_train(f"resume={run}", "pruner=snip") == 2
    assert "pruner=none (command line: snip)" in error_lines(capsys.readouterr().err)[0]


def test_a_quoted_run_directory_is_claimed_where_hydra_puts_it(tmp_path, glue_dir, capsys, monkeypatch):
    """A dir with a comma must be quoted on Hydra's command line (``hydra.run.dir="…/row=a,seed=1"``, as sweep folders
    are named); the lock is taken on the folder Hydra creates, never on a folder named with the quotes."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "row=finetune,seed=43"
    run.mkdir()
    holder = os.open(run, os.O_RDONLY | os.O_DIRECTORY)  # a live run holds it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert call_train(*RESUMABLE, f"data_dir={glue_dir}", f'hydra.run.dir="{run}"') == 2
    finally:
        os.close(holder)
    assert "in use by a running run" in error_lines(capsys.readouterr().err)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]  # no folder named '"' beside it


def test_an_interrupted_or_busy_or_finished_run_directory_is_not_reused(killed_run, tmp_path, glue_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    args = [*RESUMABLE, f"data_dir={glue_dir}", f"hydra.run.dir={run}"]
    assert call_train(*args) == 2  # a fresh run would mix its files with the interrupted one's
    assert "resume=" in error_lines(capsys.readouterr().err)[0]

    holder = os.open(run, os.O_RDONLY | os.O_DIRECTORY)  # another live run holds the directory's lock
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (flock locks belong to open files: this conflicts like a process)
    try:
        assert call_train(f"resume={run}", *kill_args(killed_run.parent)) == 2
        assert "in use by a running run" in error_lines(capsys.readouterr().err)[0]
    finally:
        os.close(holder)

    assert call_train(f"resume={run}", *kill_args(killed_run.parent)) == 0
    assert call_train(f"resume={run}", *kill_args(killed_run.parent)) == 2  # finished: nothing left to resume, nothing to overwrite
    assert "already holds a complete run" in error_lines(capsys.readouterr().err)[0]
    stamp = (run / "summary.json").stat().st_mtime_ns
    assert call_train(*[a for a in args if not a.startswith("callbacks")], "skip_finished=true") == 0  # sweeps skip it
    assert (run / "summary.json").stat().st_mtime_ns == stamp


def test_a_sweep_revisiting_an_interrupted_job_resumes_it(killed_run, tmp_path, glue_dir):
    run = tmp_path / "job"
    shutil.copytree(killed_run, run)
    assert call_train(*RESUMABLE, f"data_dir={glue_dir}", f"hydra.run.dir={run}", "skip_finished=true") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt") and summary["global_steps"] == 18


# ---- SIGTERM / SIGINT / SLURM preemption: a checkpoint at the signal, one line, exit 128 + signal ----------------

SIGNAL_STEP = 9  # mid epoch 1, one step after the step-8 checkpoint: the signal's own checkpoint is the newer one


def wait_args(root) -> list[str]:
    return ["+callbacks.wait._target_=tests.helpers.WaitForSignalAtStep", f"+callbacks.wait.step={SIGNAL_STEP}",
            f"+callbacks.wait.marker={root / 'at-step'}"]


def signal_at(root, glue_dir, signum, *, script="train.py", env=None):
    """Start a real train.py process, send it ``signum`` once it reaches step SIGNAL_STEP; (exit code, run dir, stderr)."""
    import time

    from tests import zygote
    from tests.conftest import ROOT

    run, marker = root / "run", root / "at-step"
    wait = wait_args(root)
    argv = [*RESUMABLE, f"data_dir={glue_dir}", *wait, f"hydra.run.dir={run}"]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1", **(env or {}))
    process = zygote.ForkedProcess(script, argv, environment, ROOT)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()  # no summary
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == SIGNAL_STEP  # saved at the signal
    return process.returncode, run, stderr


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signalled_run_checkpoints_says_how_to_resume_and_exits_non_zero(signame, code, straight, tmp_path, glue_dir):
    import signal as signals

    returncode, run, stderr = signal_at(tmp_path, glue_dir, getattr(signals, signame))
    assert returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and not error_lines(stderr)
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert line == f"interrupted at step {SIGNAL_STEP} by {signame}; resume with: python train.py resume={run.resolve()}"
    assert call_train(f"resume={run}", *wait_args(tmp_path)) == 0  # the command the line gives (+ the test's callback, inert now)
    assert_same_run(run, straight)
    assert logged(run) == logged(straight)


def test_a_preempted_slurm_job_requeues_itself_and_the_requeued_job_resumes(straight, tmp_path, glue_dir, monkeypatch):
    """submitit's protocol (what hydra/launcher=submitit_slurm uses): USR2 → our checkpoint → submitit's handler
    dumps the resubmission and runs `scontrol requeue <job>`; the requeued job (SLURM_RESTART_COUNT=1, same
    overrides, same directory) resumes from last.ckpt by itself."""
    import signal as signals

    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1",
             "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NAME": "train",
             "SUBMITIT_FOLDER": str(tmp_path / "submitit"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    returncode, run, stderr = signal_at(tmp_path, glue_dir, signals.SIGUSR2, script="tests/slurm_job.py", env=slurm)
    assert calls.read_text().split() == ["requeue", "4242"], stderr[-3000:]
    assert (tmp_path / "submitit" / "4242_submitted.pkl").is_file()  # the resubmission submitit requeues
    assert returncode == 255  # submitit's own exit after a requeue (sys.exit(-1))
    assert f"interrupted at step {SIGNAL_STEP} by SIGUSR2" in stderr

    for name, value in slurm.items():
        if name.startswith("SLURM"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a requeued job
    wait = ["+callbacks.wait._target_=tests.helpers.WaitForSignalAtStep", f"+callbacks.wait.step={SIGNAL_STEP}", f"+callbacks.wait.marker={tmp_path / 'at-step'}"]
    assert run_requeued(run, [*RESUMABLE, f"data_dir={glue_dir}", *wait]) == 0
    assert_same_run(run, straight)


def run_requeued(run, argv) -> int:
    """The requeued job: the same overrides in the same directory, entering as a sweep job does (no precheck)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tasks.cli import compose_checked, run_checked

    cfg = compose_checked([*argv, f"hydra.run.dir={run}"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
    HydraConfig.instance().set_config(cfg)
    try:
        run_checked(cfg, run)
        return 0
    except SystemExit as exit_:
        return exit_.code


def test_skip_finished_treats_an_unreadable_summary_as_unfinished_and_resumes(killed_run, straight, tmp_path, glue_dir, caplog):
    run = tmp_path / "job"
    shutil.copytree(killed_run, run)
    (run / "summary.json").write_text('{"status": "compl')  # cut while being copied, say
    assert call_train(*RESUMABLE, f"data_dir={glue_dir}", f"hydra.run.dir={run}", "skip_finished=true") == 0
    assert any("summary.json: not valid JSON" in r.getMessage() and "unfinished" in r.getMessage() for r in caplog.records)
    assert (run / "summary.json.unreadable").read_text() == '{"status": "compl'  # kept, not destroyed
    assert_same_run(run, straight)  # resumed from its checkpoint to the uninterrupted result
