"""The report turns run summaries into the paper's table layout and plots."""

import json
import re

import pytest

from paper.report import load_summaries, main, markdown_table, row_key


def write_run(folder, task, row, seed, value, metric="accuracy", **extra):
    summary = {"status": "complete", "task": task, "row": row, "adapter": "houlsby", "pruner": "snip", "sparsity": 0.4,
               "seed": seed, "main_metric": metric, "metrics": {metric: value}, "trained_params_pct": 1.2,
               "global_steps": 10, **extra}
    run_dir = folder / f"{row}-{task}-{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "csv").mkdir()
    (run_dir / "csv" / "metrics.csv").write_text(f"step,val/{metric}\n4,{value / 2}\n9,{value}\n")


def test_table_means_stds_and_average(tmp_path):
    for seed, value in [(1, 0.60), (2, 0.70)]:
        write_run(tmp_path, "rte", "snip", seed, value)
    write_run(tmp_path, "cola", "snip", 1, 0.30, metric="matthews")
    write_run(tmp_path, "rte", "dense", 1, 0.50)
    runs = load_summaries([tmp_path])
    table = markdown_table(runs, ["dense", "snip"])
    snip_line = next(line for line in table.splitlines() if "SNIP" in line)
    assert "| 30.0 | 65.0 ± 7.1 | 47.5 | 1.20% | 2 |" in snip_line  # Avg. of the task means: (30 + 65) / 2
    dense_line = next(line for line in table.splitlines() if "dense" in line)
    assert "| – | 50.0 | – |" in dense_line  # CoLA missing: no average


def test_rows_are_derived_without_a_row_choice():
    base = {"adapter": "houlsby", "pruner": "grasp", "sparsity": 0.4, "scope": "global"}
    assert row_key(base) == "grasp"
    assert row_key({**base, "adapter": "none"}) == "finetune"
    assert row_key({**base, "pruner": "none"}) == "dense"
    assert row_key({**base, "pruner": "random", "scope": "er"}) == "er"
    assert row_key({**base, "large_sparse": 4, "sparsity": 0.75}) == "large_sparse4"
    assert row_key({**base, "pruner": "snip", "sparsity": 0.6}) == "snip_s60"


def test_command_writes_markdown_and_plots(tmp_path, capsys):
    for row in ["dense", "snip", "large_sparse4"]:
        for seed, value in [(1, 0.8), (2, 0.7)]:  # two seeds: the convergence plot draws its ± std band
            write_run(tmp_path / "runs", "mrpc", row, seed, value)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "Table 1" in capsys.readouterr().out
    for name in ["report.md", "metric_vs_sparsity.png", "large_sparse_vs_dense.png", "convergence.png"]:
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_no_summaries_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no complete summary.json"):
        main([str(tmp_path)])


def test_a_table_appears_once_one_of_its_own_rows_ran(tmp_path):
    from paper.report import report

    write_run(tmp_path, "rte", "snip", 1, 0.6)
    write_run(tmp_path, "rte", "dense", 1, 0.5)
    text = report(load_summaries([tmp_path]))
    assert "Table 1" in text and "Table 2" not in text and "Table 3" not in text


def test_a_run_whose_table_is_not_shown_is_listed_under_other_runs(tmp_path):
    from paper.report import report

    write_run(tmp_path, "mrpc", "t4_pfeiffer", 1, 0.82)
    write_run(tmp_path, "mrpc", "dense", 1, 0.745)  # Table 1 needs a pruner row to appear
    text = report(load_summaries([tmp_path]))
    assert "Table 1" not in text and "Table 4" in text
    assert "| Adapter (dense) |" in text.split("### Other runs")[1]


def test_pruning_checks_get_their_own_table_without_a_paper_column(tmp_path):
    from paper.report import report

    write_run(tmp_path, "mrpc", "snip", 1, 0.81)
    write_run(tmp_path, "mrpc", "snip_shuffle", 1, 0.79, pruner_settings={"scorer": "snip", "control": "shuffle"})
    text = report(load_summaries([tmp_path]))
    checks = text.split("### Pruning-at-initialization checks")[1].split("###")[0]
    assert "| SNIP, mask shuffled per matrix | – |" in checks  # its own label (write_run records no lr)
    header = next(line for line in checks.splitlines() if line.startswith("| Method"))
    assert header.endswith("| seeds |")  # no reference column: the paper has no such rows
    shuffled = next(line for line in checks.splitlines() if "shuffled" in line)
    assert shuffled.count("|") == header.count("|") and "| 79.0 |" in shuffled
    assert "Other runs" not in text


def test_each_table_shows_the_papers_reference_for_its_backbone(tmp_path):
    write_run(tmp_path, "rte", "snip", 1, 0.6)
    write_run(tmp_path, "rte", "snip_s60", 1, 0.5, sparsity=0.6)
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    table1, table2 = text.split("### Table 2")
    assert "paper BERT Avg." in table1 and "| 74.2 |" in table1  # Table 1: BERT-base
    assert "paper RoBERTa Avg." in table2 and "| 78.6 |" in table2 and "| 78.2 |" in table2  # Table 2: RoBERTa only


def test_runs_of_other_backbones_or_budgets_are_never_averaged_together(tmp_path):
    """The issue's case: tiny-bert and MiniLM runs of one row and seed were averaged as one cell."""
    budget = {"epochs": 5, "max_steps": -1, "lr": 1e-3, "batch_size": 32, "accumulate_grad_batches": 1,
              "max_train_samples": None, "max_length": 128, "backbone_overrides": {}}
    write_run(tmp_path / "a", "rte", "snip", 1, 0.60, backbone="minilm", budget=budget)
    write_run(tmp_path / "b", "rte", "snip", 1, 0.40, backbone="tiny-bert", budget=budget)
    write_run(tmp_path / "c", "rte", "snip", 1, 0.55, backbone="minilm", budget={**budget, "epochs": 1})
    write_run(tmp_path / "d", "rte", "snip", 2, 0.70, backbone="minilm", budget={**budget, "lr": 2e-4})
    from paper.report import report

    text = report(load_summaries([tmp_path]))
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) == 3  # minilm 5 epochs, minilm 1 epoch, tiny-bert 5 epochs
    assert any(s.startswith("backbone minilm, 5 epochs, batch 32, max length 128, all training rows") for s in sections)
    minilm = next(s for s in sections if s.startswith("backbone minilm, 5 epochs"))
    # lr apart
    assert "| SparseAdapter SNIP | 0.001 | 60.0 |" in minilm and "| SparseAdapter SNIP | 0.0002 | 70.0 |" in minilm
    assert "50.0" not in text and "65.0" not in text  # no mean across backbones, budgets or lrs


def test_each_table_has_a_trivial_baseline_row_and_marks_cells_that_do_not_beat_it(tmp_path):
    baseline = {"predictor": "constant class 1", "metrics": {"accuracy": 0.684}}
    write_run(tmp_path, "mrpc", "dense", 1, 0.684, baseline=baseline)
    write_run(tmp_path, "mrpc", "snip", 1, 0.771, baseline=baseline)
    table = markdown_table(load_summaries([tmp_path]), ["dense", "snip"])
    lines = table.splitlines()
    assert lines[2].startswith("| Trivial baseline") and "| 68.4 |" in lines[2]
    assert "| 68.4 † |" in next(line for line in lines if "dense" in line)
    assert "| 77.1 |" in next(line for line in lines if "SNIP" in line)


def test_report_states_the_machine_time_of_each_group(tmp_path):
    from paper.report import report

    write_run(tmp_path, "mrpc", "dense", 1, 0.8, wall_seconds=5400.0)
    write_run(tmp_path, "mrpc", "snip", 1, 0.8, wall_seconds=1800.0)
    write_run(tmp_path, "rte", "snip", 1, 0.6)  # an older run without the field
    write_run(tmp_path, "mrpc", "snip", 2, 0.8, wall_seconds=3600.0)
    text = report(load_summaries([tmp_path]))
    assert "4 runs; 3.0 h of wall time in the 3 that record it" in text
    assert "A job, in minutes (mean, range, jobs): dense on mrpc 90 (90–90, 1); snip on mrpc 45 (30–60, 2)." in text

