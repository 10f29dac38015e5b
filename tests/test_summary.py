"""summary.json is written from a typed record (tasks.summary.RunSummary) with the keys and order it always had."""

import json

from tasks.summary import RunSummary
from tests.conftest import ROOT

PARAMETERS = {"adapter_weights_total": 10, "adapter_weights_kept": 6, "actual_sparsity": 0.4, "trained_params": 8,
              "trained_params_body": 6, "head_params": 2, "backbone_params": 100, "trained_params_pct": 6.0}
KEYS = ["status", "task", "backbone", "adapter", "row", "adapter_config", "pruner", "scope", "pruner_settings",
        "sparsity", "large_sparse", "seed", "budget", "precision", "quantization", "backbone_dtype", "resumed_from", "resume_changes",
        "main_metric", "metrics", "baseline", *PARAMETERS, "skipped_rows", "dataset", "eval_dataset", "chat_template",
        "samples", "empty_matrices", "silenced_modules", "tied_score_tensors", "lookahead_tensors", "layer_density",
        "prune_seconds", "global_steps", "epochs", "wall_seconds", "wall_seconds_this_process",
        "cpu_threads"]  # the summary dict's keys before the dataclass


def summary(**data_fields) -> RunSummary:
    return RunSummary(task="mrpc", backbone="minilm", adapter="houlsby", row="snip", adapter_config={"bottleneck": 64},
                      pruner="snip", scope="global", pruner_settings={"scorer": "snip"}, sparsity=0.4,
                      large_sparse=None, seed=42, budget={"lr": 1e-3}, precision="32-true", quantization=None, backbone_dtype="float32",
                      resumed_from=None,
                      resume_changes={}, main_metric="accuracy", metrics={"accuracy": 0.8}, baseline=None,
                      parameters=PARAMETERS, data_fields=data_fields)


def test_the_typed_summary_writes_the_keys_summary_json_always_had():
    sft = summary(dataset="a.jsonl", eval_dataset=None, chat_template="chatml").as_dict()
    assert list(sft) == KEYS and sft["status"] == "complete" and sft["trained_params_pct"] == 6.0
    assert list(summary().as_dict()) == [k for k in KEYS if k not in ("dataset", "eval_dataset", "chat_template")]
    json.dumps(sft)  # plain data


def test_committed_summaries_hold_the_same_keys_in_the_same_order():
    """The report reads results/claims/*/summary.json: older runs have fewer keys, never other ones or another order."""
    paths = sorted((ROOT / "results" / "claims").rglob("summary.json"))[:50]
    assert paths
    for path in paths:
        keys = list(json.loads(path.read_text()))
        assert set(keys) <= set(KEYS), (path, set(keys) - set(KEYS))
        assert keys == [k for k in KEYS if k in keys], path
