"""Sweeps lock their folder as runs do, and a second Ctrl+C stops at once saying which checkpoint is left (issue 35)."""

import fcntl
import os
import signal
import threading
import time

import torch

from tests.cli_support import FAST, call_train, error_lines


def test_a_second_sweep_on_one_sweep_folder_is_refused(tmp_path, glue_dir, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    holder = os.open(sweep, os.O_RDONLY | os.O_DIRECTORY)  # a running sweep holds the folder's lock
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (flock locks belong to open files: this conflicts like a process)
    try:
        assert call_train(*FAST, f"data_dir={glue_dir}", "-m", "seed=1,2", f"hydra.sweep.dir={sweep}") == 2
    finally:
        os.close(holder)
    [line] = error_lines(capsys.readouterr().err)
    assert f"hydra.sweep.dir: {sweep.resolve()} is in use by a running sweep" in line, line
    assert list(sweep.iterdir()) == []  # no job started


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint_left(tmp_path, glue_dir, capsys):
    """Real SIGINTs to this process (the handlers run in the main thread, as in a terminal), sent by a thread once the
    run waits at step 9; train.py's entry point in-process (tests.cli_support)."""
    run, marker = tmp_path / "run", tmp_path / "at-step"
    argv = [*FAST, f"data_dir={glue_dir}", "data.max_train_samples=24", "data.batch_size=4", "trainer.max_steps=-1", "trainer.max_epochs=2",
            "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=4", f"hydra.run.dir={run}",
            "+callbacks.wait._target_=tests.helpers.WaitForSignalAtStep", "+callbacks.wait.step=9", f"+callbacks.wait.marker={marker}",
            "+callbacks.wait.signals=2"]

    def press_ctrl_c_twice():
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)

    presser = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    presser.start()
    code = call_train(*argv)
    presser.join(timeout=60)
    stderr = capsys.readouterr().err
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and not error_lines(stderr)
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert line == (f"interrupted at step 9 by a second SIGINT, at once (no checkpoint of this step); the last checkpoint (step 8) is"
                    f" {checkpoint}; resume with: python train.py resume={run.resolve()}"), line
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 8  # whole: written atomically before
    assert not list((run / "checkpoints").glob("*.tmp")) and not (run / "summary.json").exists()
