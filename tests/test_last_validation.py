"""The dev set is scored once after the last optimizer step: the epoch-end validation's metrics are the summary's
when nothing trained after it; otherwise the closing ``trainer.validate`` runs (and its row is in the log)."""

import csv
import json

import pytest

from tests.cli_support import FAST, call_train

# 32 rows in batches of 8: 4 steps an epoch
RUN = [*FAST, "data.max_train_samples=32", "trainer.max_steps=-1", "trainer.max_epochs=2"]


def validations(run) -> list[dict]:
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("val/accuracy")]


def finish(run) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    rows = validations(run)
    last = rows[-1]
    assert summary["metrics"] == {k.removeprefix("val/"): pytest.approx(float(v), abs=1e-7)
                                  for k, v in last.items() if k.startswith("val/") and v}
    return summary, rows


# Lightning logs a validation inside the training loop at global step - 1, the closing trainer.validate at the step
@pytest.mark.parametrize("extra, steps, passes", [
    ([], ["3", "7"], "each epoch's end only: no second pass after the last step"),
    (["trainer.val_check_interval=0.5"], ["1", "3", "5", "7"], "every 2 of 4 batches: the last one at the end, no second pass"),
    (["trainer.max_steps=6"], ["3", "6"], "stopped mid-epoch by max_steps: the closing pass scores step 6"),
    (["trainer.val_check_interval=0.5", "data.max_train_samples=40"], ["1", "3", "6", "8", "10"],
     "every 2 of 5 batches, none after the epoch's last: the closing pass"),
    (["+callbacks.nudge._target_=tests.helpers.NudgeAtTrainEnd"], ["3", "7", "8"], "weights changed after it: closing pass"),
])
def test_the_summary_scores_the_weights_training_ended_with(tmp_path, glue_dir, extra, steps, passes):
    assert call_train(*RUN, *extra, f"data_dir={glue_dir}", f"hydra.run.dir={tmp_path}") == 0
    _, rows = finish(tmp_path)
    assert [row["step"] for row in rows] == steps, passes
