"""The report's Table 2 layout across families: GLUE Avg. / XSum R2 / SQuAD F1."""

from paper.report import load_summaries, report
from tests.test_report import write_run

GLUE_BUDGET = {"epochs": 5, "max_steps": -1, "lr": 1e-3, "batch_size": 32, "max_length": 128}
XSUM_BUDGET = {"epochs": 5, "max_steps": -1, "lr": 1e-3, "batch_size": 8, "max_length": 512}
SQUAD_BUDGET = {"epochs": 2, "max_steps": -1, "lr": 1e-3, "batch_size": 12, "max_length": 384}


def test_table2_columns_come_from_each_family_with_their_baselines(tmp_path):
    for row, rte, cola, r2, f1 in [("dense", 0.60, 0.40, 0.10, 0.70), ("snip", 0.70, 0.50, 0.12, 0.80)]:
        write_run(tmp_path, "rte", row, 1, rte, backbone="roberta-base", budget=GLUE_BUDGET,
                  baseline={"predictor": "constant class 0", "metrics": {"accuracy": 0.5}})
        write_run(tmp_path, "cola", row, 1, cola, metric="matthews", backbone="roberta-base", budget=GLUE_BUDGET,
                  baseline={"predictor": "constant class 1", "metrics": {"matthews": 0.0}})
        write_run(tmp_path, "xsum", row, 1, r2, metric="rouge2", backbone="bart-large", budget=XSUM_BUDGET,
                  baseline={"predictor": "LEAD-1 (first sentence)", "metrics": {"rouge2": 0.02}})
        write_run(tmp_path, "squad", row, 1, f1, metric="f1", backbone="minilm", budget=SQUAD_BUDGET, baseline=None)
    text = report(load_summaries([tmp_path]))
    table = text.split("## Table 2 layout")[1].split("\n## ")[0]
    assert "| Method | GLUE Avg. | XSum R2 | SQuAD F1 | paper (GLUE / XSum / SQuAD) |" in table
    assert "| Trivial baseline (constant predictor / LEAD-1) | 25.0 | 2.0 | – | |" in table  # SQuAD: no baseline
    assert "| Adapter (dense) | 50.0 | 10.0 | 70.0 | 78.3 / 21.6 / 87.4 |" in table
    assert "| SparseAdapter SNIP | 60.0 | 12.0 | 80.0 | 78.6 / 21.8 / 87.7 |" in table
    assert "XSum R2: xsum on backbone bart-large" in table and "SQuAD F1: squad on backbone minilm" in table


def test_no_table2_section_without_xsum_or_squad(tmp_path):
    write_run(tmp_path, "rte", "snip", 1, 0.6)
    assert "Table 2 layout" not in report(load_summaries([tmp_path]))
