"""Paired differences per claim: same task and seed, row minus reference, checked by hand."""

import pytest
from omegaconf import OmegaConf

from paper.paired import (
    CLAIMS, average_over_tasks, differences, early_score, interval, paired_table, paper_difference, per_task_table,
    verdict,
)
from paper.report import report
from paper.runs import load_summaries
from tests.test_report import write_run

SNIP_VS_DENSE = next(c for c in CLAIMS if (c.row, c.reference) == ("snip", "dense"))


def grid(tmp_path):
    """MRPC seeds 1-3 and STS-B seeds 1-2 for dense and SNIP; one unpaired SNIP run (seed 9)."""
    values = {("dense", "mrpc"): [0.70, 0.75, 0.80], ("snip", "mrpc"): [0.72, 0.74, 0.83],
              ("dense", "stsb"): [0.80, 0.84], ("snip", "stsb"): [0.81, 0.86]}
    for (row, task), scores in values.items():
        for seed, value in enumerate(scores, start=1):
            write_run(tmp_path, task, row, seed, value, metric="accuracy" if task == "mrpc" else "pearson")
    write_run(tmp_path, "mrpc", "snip", 9, 0.99)
    return load_summaries([tmp_path])


def test_differences_pair_runs_by_task_and_seed(tmp_path):
    found = differences(grid(tmp_path), SNIP_VS_DENSE)
    assert {task: {s: round(v, 6) for s, v in seeds.items()} for task, seeds in found.items()} == {
        "mrpc": {1: 2.0, 2: -1.0, 3: 3.0}, "stsb": {1: 1.0, 2: 2.0}}  # seed 9 has no dense partner


def test_average_uses_only_seeds_that_ran_every_task(tmp_path):
    found = differences(grid(tmp_path), SNIP_VS_DENSE)
    average = average_over_tasks(found, ["mrpc", "stsb"])
    assert list(average) == [1, 2]
    assert round(average[1], 6) == 1.5 and round(average[2], 6) == 0.5  # (2 + 1) / 2, (-1 + 2) / 2


def test_table_shows_mean_std_and_sign_count(tmp_path):
    table = paired_table(grid(tmp_path))
    line = next(line for line in table.splitlines() if "snip − dense" in line)
    # MRPC: mean of (2, -1, 3) = +1.3, std 2.1, 2 of 3 positive; STS-B: +1.5 ± 0.7; Avg.: (1.5, 0.5) → +1.0 ± 0.7
    assert "| +1.3 ± 2.1 (2/3 > 0) | +1.5 ± 0.7 (2/2 > 0) | +1.0 ± 0.7 (2/2 > 0) |" in line
    # all five pairs (2, -1, 3, 1, 2): mean 1.4, std 1.517, t(0.975, 4) = 2.776 → ±1.88; a "matches" claim above −1
    assert line.endswith("| +1.4 [-0.5, +3.3] (n=5) | reproduced | +0.6 (BERT) |")
    assert "Paired differences" in report(load_summaries([tmp_path]))


def test_per_task_table_applies_the_rule_to_each_tasks_seeds_alone(tmp_path):
    lines = per_task_table(grid(tmp_path)).splitlines()
    line = next(line for line in lines if line.startswith(f"| {SNIP_VS_DENSE.text} |"))
    # MRPC (2, -1, 3): ±t(0.975, 2) · 2.082 / √3 = ±5.17; STS-B (1, 2): ±t(0.975, 1) · 0.707 / √2 = ±6.35
    assert line.endswith("| +1.3 [-3.8, +6.5] within noise | +1.5 [-4.9, +7.9] within noise |")
    assert "task by task" in report(load_summaries([tmp_path]))


def test_interval_is_the_paired_t_interval():
    # (2, -1, 3): mean 4/3, std sqrt(78/18) = 2.0817, standard error 1.2019, t(0.975, 2) = 4.3027 → ±5.1712
    mean, low, high = interval([2.0, -1.0, 3.0])
    assert (mean, low, high) == pytest.approx((4 / 3, 4 / 3 - 5.1712, 4 / 3 + 5.1712), abs=1e-4)
    assert interval([1.0]) is None


@pytest.mark.parametrize("values, kind, expected", [
    ([2.0, -1.0, 3.0], "beats", "within noise"),      # interval straddles 0
    ([2.0, -1.0, 3.0], "matches", "within noise"),    # ahead on average, but the interval reaches -3.8
    ([0.5, 0.2, 0.4], "matches", "reproduced"),       # mean 0.37, ±0.38: above -1
    ([-0.5, -0.4, -0.6], "matches", "reproduced"),    # mean -0.5, ±0.25: worse, but by less than the 1-point margin
    ([1.0, 2.0, 1.5, 2.0, 1.0], "beats", "reproduced"),  # mean 1.5, ±0.68: above 0
    ([-3.0, -2.0, -2.5], "matches", "not reproduced"),  # mean -2.5, ±1.24: below the -1 margin
    ([-1.5, -1.2, -0.9], "matches", "within noise"),  # mean -1.2, ±0.75: worse, perhaps by less than the margin
    ([-3.0, -2.0, -2.5], "beats", "not reproduced"),
    ([-1.0, 0.5, -0.2], "matches", "within noise"),   # interval -2.1 to +1.6
    ([4.0], "beats", "too few pairs"),
])
def test_verdicts(values, kind, expected):
    assert verdict(values, kind) == expected


def test_early_score_averages_the_first_half_of_training(tmp_path):
    write_run(tmp_path, "mrpc", "dense", 1, 0.8, global_steps=100)
    (tmp_path / "dense-mrpc-1" / "csv" / "metrics.csv").write_text(
        "step,val/accuracy\n24,0.60\n49,0.70\n74,0.75\n99,0.80\n99,0.80\n")  # the last evaluation repeats
    [run] = load_summaries([tmp_path])
    assert early_score(run) == pytest.approx(65.0)  # fractions 0.25 and 0.5


def test_a_curve_that_misses_its_start_has_no_early_score(tmp_path):
    """Evaluations every 5% of training, the first four lost (a log cut by a resume): no score, not a high one."""
    write_run(tmp_path, "mrpc", "dense", 1, 0.8, global_steps=100)
    rows = "".join(f"{step - 1},{0.5 + step / 250}\n" for step in range(25, 101, 5))
    (tmp_path / "dense-mrpc-1" / "csv" / "metrics.csv").write_text(f"step,val/accuracy\n{rows}")
    [run] = load_summaries([tmp_path])
    assert early_score(run) is None


def test_a_convergence_claim_pairs_early_scores(tmp_path):
    for row, curve in [("dense", (0.60, 0.70, 0.78, 0.80)), ("large_sparse4", (0.70, 0.74, 0.79, 0.80))]:
        write_run(tmp_path, "mrpc", row, 1, curve[-1], global_steps=40)
        rows = "".join(f"{step},{value}\n" for step, value in zip((9, 19, 29, 39), curve))
        (tmp_path / f"{row}-mrpc-1" / "csv" / "metrics.csv").write_text(f"step,val/accuracy\n{rows}")
    runs = load_summaries([tmp_path])
    faster = next(c for c in CLAIMS if c.measure == "early")
    final = next(c for c in CLAIMS if (c.row, c.reference, c.measure) == ("large_sparse4", "dense", "final"))
    assert differences(runs, faster)["mrpc"][1] == pytest.approx(72.0 - 65.0)  # fractions 1/4 and 1/2
    assert differences(runs, final)["mrpc"][1] == pytest.approx(0.0)


def test_no_pair_no_table(tmp_path):
    write_run(tmp_path, "mrpc", "snip", 1, 0.7)
    assert paired_table(load_summaries([tmp_path])) is None


def test_the_claims_grid_runs_every_row_each_claim_needs():
    """experiment=claims* compose, hold one budget, and sweep both rows of every claim; the rows most claims
    rest on run at seeds 42-44, and the convergence plot's rows are evaluated every quarter epoch."""
    from hydra import compose, initialize_config_dir

    from tests.test_cli import ROOT

    names = ["claims", "claims_convergence", "claims_finetune", "claims_references"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        sweeps = {name: compose("train", overrides=[f"experiment={name}"], return_hydra_config=True) for name in names}
    jobs = set()  # (row, task, seed)
    for name, cfg in sweeps.items():
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.data.max_length) == (5, 32, 128)
        assert cfg.backbone.config.attention_probs_dropout_prob == 0 and "last_checkpoint" in cfg.callbacks
        assert cfg.data.group_by_length and cfg.hydra.sweep.dir == "results/claims/grid"
        params = cfg.hydra.sweeper.params
        rows, tasks, seeds = (str(params[key]).split(",") for key in ("row", "task", "seed"))
        assert tasks == ["mrpc", "stsb", "cola"]
        assert list(params)[0] == "seed"  # seed-major: a grid stopped midway holds whole seeds
        assert cfg.trainer.val_check_interval == (0.25 if {"dense", "large_sparse4", "finetune"} & set(rows) else 1.0)
        jobs |= {(row, task, int(seed)) for row in rows for task in tasks for seed in seeds}
    assert len(jobs) == 84
    assert sweeps["claims"].optimizer.lr != sweeps["claims_finetune"].optimizer.lr  # each its own lr sweep's choice
    for claim in CLAIMS:
        for row in (claim.row, claim.reference):
            assert {(row, task, 42) for task in ("mrpc", "stsb", "cola")} <= jobs, (claim.text, row)
    three_seeds = ["finetune", "dense", "snip", "random", "snip_s80", "random_s80", "large_sparse4"]  # issue 12's list
    tasks = ("mrpc", "stsb", "cola")
    assert {(row, task, seed) for row in three_seeds for task in tasks for seed in (42, 43, 44)} <= jobs


def test_the_papers_differences_are_its_tables_averages():
    """Each claim's paper column is row − reference of the paper's GLUE averages, computed by hand here."""
    # BERT-base Tables 1/3: SNIP 74.2, dense 73.6, Rand. 73.7, Mag. 73.2, ER 73.7, GraSP 74.0, r=256 75.1, FT 74.5
    expected = {
        ("snip", "dense", "final"): "+0.6 (BERT)", ("snip_s80", "dense", "final"): "−0.4 (RoBERTa)",  # 77.9 − 78.3
        ("snip", "random", "final"): "+0.5 (BERT)", ("snip_s80", "random_s80", "final"): "–",  # not in the paper
        ("snip", "magnitude", "final"): "+1.0 (BERT)", ("snip", "er", "final"): "+0.5 (BERT)",
        ("snip", "grasp", "final"): "+0.2 (BERT)", ("large_sparse4", "dense", "final"): "+1.5 (BERT)",
        ("large_sparse4", "dense", "early"): "Figure 4", ("large_sparse4", "finetune", "final"): "+0.6 (BERT)",
        ("dense", "finetune", "final"): "−0.9 (BERT)",
    }
    assert {(c.row, c.reference, c.measure): paper_difference(c) for c in CLAIMS} == expected


def test_every_pai_check_has_its_rows_in_the_pai_grid_or_the_claims_grid():
    """Issue 24's checks pair a row of experiment=claims_pai (every seed and task) with a reference
    that the PaI grid or the claims grid trains at 3 seeds, at the same budget."""
    import re

    from paper.paired import CHECKS
    from tests.conftest import ROOT

    script = (ROOT / "scripts" / "reproduce_claims.sh").read_text()
    pai_rows = set(re.search(r"PAI_ROWS:-([^}]*)\}", script).group(1).split())
    three_seed_references = {"dense", "snip", "snip_s80"}
    zero_init_rows = set(re.search(r"row=(zi_\S*)", script).group(1).split(","))  # issue 34's own 3-seed grid
    for check in CHECKS:
        if {check.row, check.reference} <= zero_init_rows:
            continue
        assert {check.row, check.reference} & pai_rows, check.text
        assert {check.row, check.reference} <= pai_rows | three_seed_references, check.text
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        pai = compose("train", overrides=["experiment=claims_pai", "row=snip_shuffle"], return_hydra_config=True)
        grid = compose("train", overrides=["experiment=claims_convergence"], return_hydra_config=True)
    for key in ("optimizer.lr", "data.group_by_length", "trainer.max_epochs", "backbone.config"):
        assert OmegaConf.select(pai, key) == OmegaConf.select(grid, key), key
    assert str(pai.hydra.sweeper.params.seed) == "42,43,44" and str(pai.hydra.sweeper.params.task) == "mrpc,stsb,cola"
    assert pai.pruner.control == "shuffle" and pai.sparsity == 0.4
