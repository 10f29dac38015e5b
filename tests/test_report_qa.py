"""QA runs (SQuAD: F1, EM beside it) in the report beside GLUE ones: never averaged or pooled together (issue 36)."""

import pytest
from omegaconf import OmegaConf

from paper.paired import CLAIMS, paired_table
from paper.report import load_summaries, markdown_table, report
from tests.test_report import write_run

SNIP_VS_DENSE = next(c for c in CLAIMS if (c.row, c.reference) == ("snip", "dense"))
BUDGET = {"epochs": 2, "max_steps": -1, "lr": 1e-3, "batch_size": 12, "max_length": 384}


def squad_run(folder, row, seed, f1, em, **extra):
    write_run(folder, "squad", row, seed, f1, metric="f1", metrics={"f1": f1, "exact_match": em}, **extra)


def mixed(tmp_path, **extra):
    """MRPC and SQuAD, dense and SNIP, seeds 1-3, in one budget group (the worst case: one table holds both)."""
    for seed, (dense, snip) in enumerate([(0.70, 0.72), (0.75, 0.74), (0.80, 0.83)], start=1):
        write_run(tmp_path, "mrpc", "dense", seed, dense, **extra)
        write_run(tmp_path, "mrpc", "snip", seed, snip, **extra)
    for seed, (dense, snip) in enumerate([((0.50, 0.40), (0.60, 0.45)), ((0.52, 0.42), (0.62, 0.47)),
                                          ((0.54, 0.44), (0.64, 0.50))], start=1):
        squad_run(tmp_path, "dense", seed, *dense, **extra)
        squad_run(tmp_path, "snip", seed, *snip, **extra)
    return load_summaries([tmp_path])


def test_verdicts_pool_within_a_task_family(tmp_path):
    table = paired_table(mixed(tmp_path))
    lines = [line for line in table.splitlines() if "snip − dense" in line]
    assert len(lines) == 2  # one line (and one verdict) per family, never GLUE and SQuAD pairs pooled
    glue, qa = lines
    assert glue.startswith(f"| {SNIP_VS_DENSE.text} [GLUE] |")
    assert qa.startswith(f"| {SNIP_VS_DENSE.text} [QA (SQuAD)] |")
    # GLUE: MRPC differences (2, -1, 3): n=3; its Avg. is MRPC's; the SQuAD cell is empty on this line
    assert "| +1.3 ± 2.1 (2/3 > 0) | – | +1.3 ± 2.1 (2/3 > 0) | +1.3 [-3.8, +6.5] (n=3) | within noise |" in glue
    # QA: F1 differences (10, 10, 10), EM beside them (5, 5, 6); the interval is F1's alone: a constant +10
    assert "| – | +10.0 ± 0.0 (3/3 > 0); EM +5.3 ± 0.6 (3/3 > 0) | +10.0 ± 0.0 (3/3 > 0) |" in qa
    assert "(n=3) | reproduced |" in qa
    # the paper column: BERT's GLUE averages 74.2 − 73.6 on the GLUE line; Table 2's BERT SQuAD F1 87.7 − 87.4 on the QA one
    assert glue.endswith("| +0.6 (BERT) |") and qa.endswith("| +0.3 (BERT, SQuAD F1) |")


def test_the_papers_difference_beyond_glue_is_its_table2_column():
    """Table 2 prints 'GLUE / XSum / SQuAD' per row: each family's paper column reads its own number."""
    from paper.paired import paper_difference

    snip_s80, dense_vs_finetune = (next(c for c in CLAIMS if (c.row, c.reference) == pair)
                                   for pair in (("snip_s80", "dense"), ("dense", "finetune")))
    assert paper_difference(snip_s80, "qa") == "−0.4 (BERT, SQuAD F1)"  # 87.0 − 87.4
    assert paper_difference(dense_vs_finetune, "qa") == "−0.4 (BERT, SQuAD F1)"  # 87.4 − 87.8
    assert paper_difference(dense_vs_finetune, "seq2seq") == "−0.3 (BART-large, XSum R2)"  # 21.6 − 21.9
    assert paper_difference(SNIP_VS_DENSE, "seq2seq") == "+0.2 (BART-large, XSum R2)"  # 21.8 − 21.6


def test_one_family_keeps_the_plain_claim_text(tmp_path):
    for seed in (1, 2):
        squad_run(tmp_path, "dense", seed, 0.5, 0.4)
        squad_run(tmp_path, "snip", seed, 0.5 + seed / 100, 0.4)
    [line] = [line for line in paired_table(load_summaries([tmp_path])).splitlines() if "snip − dense" in line]
    assert line.startswith(f"| {SNIP_VS_DENSE.text} |") and "(n=2)" in line


def test_tables_show_squad_f1_and_em_and_average_glue_only(tmp_path):
    table = markdown_table(mixed(tmp_path), ["dense", "snip"])
    header, _, dense, snip = table.splitlines()
    assert header.startswith("| Method | lr | MRPC | SQuAD F1 | SQuAD EM | Avg. |")
    # Avg.: MRPC only
    assert dense.startswith("| Adapter (dense) | – | 75.0 ± 5.0 | 52.0 ± 2.0 | 42.0 ± 2.0 | 75.0 |")
    assert snip.startswith("| SparseAdapter SNIP | – | 76.3 ± 5.9 | 62.0 ± 2.0 | 47.3 ± 2.5 | 76.3 |")


def test_squad_in_its_own_budget_reaches_table2_and_its_own_verdicts(tmp_path):
    glue_budget = {**BUDGET, "epochs": 5, "batch_size": 32, "max_length": 128}
    for seed in (1, 2, 3):
        write_run(tmp_path, "mrpc", "dense", seed, 0.70, budget=glue_budget, backbone="minilm")
        write_run(tmp_path, "mrpc", "snip", seed, 0.70 + seed / 100, budget=glue_budget, backbone="minilm")
        squad = {"budget": {**BUDGET, "doc_stride": 128}, "backbone": "minilm"}
        squad_run(tmp_path, "dense", seed, 0.50, 0.40, **squad)
        squad_run(tmp_path, "snip", seed, 0.55, 0.41 + seed / 100, **squad)
    text = report(load_summaries([tmp_path]))
    cross = text.split("## Table 2 layout")[1].split("\n## ")[0]
    assert "| Adapter (dense) | 70.0 | 55.0 |" not in cross and "| Adapter (dense) | 70.0 | 50.0 |" in cross
    squad_section = next(part for part in text.split("\n## ") if "stride 128" in part.splitlines()[0])
    assert "SQuAD F1 | SQuAD EM" in squad_section and "MRPC" not in squad_section.split("### Paired")[0]
    [line] = [line for line in squad_section.splitlines()
              if line.startswith(f"| {SNIP_VS_DENSE.text} | snip − dense")]
    assert "(n=3) | reproduced |" in line  # F1 +5 on every seed


def test_the_squad_grid_runs_the_rows_of_table2s_squad_claims():
    """experiment=claims_squad(_finetune) compose on task=squad, share one budget, and sweep both rows of each
    claim Table 2 carries for SQuAD (SNIP-0.4 and SNIP-0.8 vs dense; dense vs fine-tuning) at seeds 42-44."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        adapters, finetune = (compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
                              for name in ("claims_squad", "claims_squad_finetune"))
    rows = set()
    for cfg in (adapters, finetune):
        assert cfg.task.name == "squad" and cfg.hydra.runtime.choices.backbone == "minilm"
        assert "last_checkpoint" in cfg.callbacks
        assert str(cfg.hydra.sweeper.params.seed) == "42,43,44" and list(cfg.hydra.sweeper.params)[0] == "seed"
        rows |= set(str(cfg.hydra.sweeper.params.row).split(","))
    for key in ("trainer.max_epochs", "data", "backbone.config", "trainer.precision", "hydra.sweep.dir"):
        assert OmegaConf.select(adapters, key) == OmegaConf.select(finetune, key), key
    table2 = {("snip", "dense"), ("snip_s80", "dense"), ("dense", "finetune")}
    squad_claims = [c for c in CLAIMS if (c.row, c.reference) in table2]
    assert len(squad_claims) == 3 and all({c.row, c.reference} <= rows for c in squad_claims)
    assert rows == {"dense", "snip", "snip_s80", "finetune"}


@pytest.mark.parametrize("name", ["published.yaml", "rows.yaml", "tables.yaml", "tasks.yaml", "claims.yaml"])
def test_the_papers_definitions_are_plain_data(name):
    """Rows, published numbers, tables, tasks and claims are YAML read with safe_load: no code, no tags."""
    import yaml

    from paper.definitions import DATA

    text = (DATA / name).read_text(encoding="utf-8")
    assert "!!" not in text and "_target_" not in text
    assert isinstance(yaml.safe_load(text), (dict, list))


def test_a_dev_subset_is_part_of_the_budget_only_when_set():
    """A SQuAD grid scored on part of the dev set is never grouped with whole-dev runs; GLUE budgets are unchanged."""
    import json

    from paper.report import describe_group
    from paper.runs import group_key
    from tasks.budget import training_budget

    config = {"trainer": {"max_epochs": 2}, "optimizer": {"lr": 1e-3},
              "data": {"batch_size": 12, "max_length": 384, "doc_stride": 128, "max_eval_samples": None}}
    whole = training_budget(config)
    half = training_budget({**config, "data": {**config["data"], "max_eval_samples": 5285}})
    assert "max_eval_samples" not in whole and half["max_eval_samples"] == 5285
    keys = [group_key({"backbone": "minilm", "budget": budget}) for budget in (whole, half)]
    assert keys[0] != keys[1] and "first 5285 dev rows" in describe_group(keys[1])
    assert "dev rows" not in describe_group(keys[0]) and json.loads(keys[0])["doc_stride"] == 128


def test_a_squad_only_table_has_no_paper_glue_average_beside_it(tmp_path):
    """The paper's reference column is its GLUE average; beside SQuAD F1 alone it would read as a SQuAD number."""
    for seed in (1, 2):
        squad_run(tmp_path, "dense", seed, 0.70, 0.58)
        squad_run(tmp_path, "snip", seed, 0.69, 0.57)
    runs = load_summaries([tmp_path])
    header = markdown_table(runs, ["dense", "snip"]).splitlines()[0]
    assert header == "| Method | lr | SQuAD F1 | SQuAD EM | Avg. | #Param | seeds |"
    assert "paper BERT Avg." in markdown_table(mixed(tmp_path / "mixed"), ["dense", "snip"]).splitlines()[0]


def test_an_lr_sweeps_report_shows_and_pairs_each_row_at_its_best_lr(tmp_path):
    """One job per lr ties every lr on frequency: the sweep's rule (best dev F1) picks, whatever order they load in."""
    for lr, dense, finetune in [(5e-4, 0.666, 0.696), (1e-3, 0.698, 0.660), (2e-3, 0.703, 0.725)]:
        squad_run(tmp_path / f"lr{lr}", "dense", 42, dense, dense - 0.1, budget={**BUDGET, "lr": lr})
        squad_run(tmp_path / f"lr{lr}", "finetune", 42, finetune, finetune - 0.1, adapter="none", pruner="none",
                  budget={**BUDGET, "lr": lr})
    text = report(load_summaries([tmp_path]))
    table2 = text.split("## Table 2 layout")[1].split("\n## ")[0]
    assert "| Fine-tune | 72.5 |" in table2 and "| Adapter (dense) | 70.3 |" in table2
    line = next(line for line in text.splitlines() if "dense − finetune" in line)
    assert "| -2.2 (0/1 > 0); EM -2.2 (0/1 > 0) |" in line  # 70.3 − 72.5: each row's winner, not the first lr loaded
