"""The CSV log a resumed job continues: earlier rows kept on disk until the merged file replaces them."""

import csv

from tasks.loggers import CSVLogger


def rows(path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_continued_log_keeps_the_earlier_rows_until_its_first_save_and_drops_the_ones_logged_again(tmp_path):
    first = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(4):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.log_metrics({"val/f1": 0.5}, step=3)
    first.save()
    log = tmp_path / "csv" / "metrics.csv"
    assert [row["step"] for row in rows(log)] == ["0", "1", "2", "3", "3"]

    resumed = CSVLogger(save_dir=str(tmp_path), name="csv", version="")  # the checkpoint was written after step 1
    resumed.continue_log()
    resumed.log_metrics({"train/loss": 0.3}, step=2)  # the process starts writing: Lightning's writer deleted the file here
    assert [row["step"] for row in rows(log)] == ["0", "1", "2", "3", "3"]  # killed now, nothing would be lost

    resumed.log_metrics({"train/loss": 0.2, "lr": 1e-3}, step=3)  # a new key: the header grows
    resumed.save()
    merged = rows(log)
    assert [(row["step"], row["train/loss"], row["lr"]) for row in merged] == [
        ("0", "1.0", ""), ("1", "0.5", ""), ("2", "0.3", ""), ("3", "0.2", "0.001")]
    assert not list((tmp_path / "csv").glob("*.partial"))

    resumed.log_metrics({"train/loss": 0.1}, step=4)  # later saves append as Lightning's do
    resumed.save()
    assert [row["step"] for row in rows(log)] == ["0", "1", "2", "3", "4"]
