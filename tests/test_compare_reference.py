"""benchmarks/compare_reference.py pairs the plain loop's results with our full fine-tuning runs by task and seed."""

import importlib.util
import json

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("compare_reference", ROOT / "benchmarks" / "compare_reference.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write(folder, plain, ours):
    for seed, accuracy in plain.items():
        (folder / f"plain-mrpc-seed{seed}.json").write_text(json.dumps({"dev_accuracy": accuracy}))
    for seed, accuracy in ours.items():
        run = folder / f"row=finetune,seed={seed},task=mrpc"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(
            {"status": "complete", "adapter": "none", "task": "mrpc", "seed": seed, "metrics": {"accuracy": accuracy}}))


def test_pairs_by_seed_and_reports_the_mean_gap(tmp_path):
    write(tmp_path, {1: 0.824, 2: 0.806, 3: 0.80}, {1: 0.762, 2: 0.809, 4: 0.9})  # seed 3 and 4 have no partner
    text = compare.main([str(tmp_path)])
    assert "| mrpc | 1 | 82.4 | 76.2 | -6.2 |" in text and "| mrpc | 2 | 80.6 | 80.9 | +0.3 |" in text
    assert "Mean gap -2.95 points: NOT within ±1.5" in text  # (-6.2 + 0.3) / 2


def test_within_tolerance(tmp_path):
    write(tmp_path, {1: 0.80, 2: 0.82}, {1: 0.81, 2: 0.80})
    assert "Mean gap -0.50 points: within ±1.5" in compare.main([str(tmp_path)])


def test_nothing_to_pair_is_a_clear_error(tmp_path):
    write(tmp_path, {1: 0.8}, {2: 0.8})
    with pytest.raises(SystemExit, match="no seed has both"):
        compare.main([str(tmp_path)])
