"""A run's training budget, recorded in its summary: what its numbers depend on besides row, task and seed."""

from __future__ import annotations

FULL_PRECISION = ("32-true", "32", 32)


def training_budget(config: dict) -> dict:
    """What a run's numbers depend on besides its row, task and seed (from its resolved config).

    The report never averages runs whose budgets differ: a 32-step run beside a 5-epoch run, or a
    tiny random backbone beside MiniLM, would make a number that describes neither. Settings added
    later are recorded only when they differ from what older runs implied, so older runs group as before.
    """
    trainer, data, optimizer = config.get("trainer", {}), config.get("data", {}), config.get("optimizer", {})
    return {
        "epochs": trainer.get("max_epochs"),
        "max_steps": trainer.get("max_steps", -1),
        "lr": optimizer.get("lr"),
        "batch_size": data.get("batch_size"),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
        "max_train_samples": data.get("max_train_samples"),
        "max_length": data.get("max_length"),
        "backbone_overrides": dict(config.get("backbone", {}).get("config") or {}),
        # QA and seq2seq windows; absent for GLUE, so GLUE budgets (and their grouping) are unchanged
        **{key: data[key] for key in ("doc_stride", "max_target_length") if key in data},
        **({"group_by_length": True} if data.get("group_by_length") else {}),
        # a dev subset (e.g. SQuAD's first half) scores other questions than the whole dev set: never averaged together
        **({"max_eval_samples": data["max_eval_samples"]} if data.get("max_eval_samples") else {}),
        **({"precision": trainer["precision"]} if trainer.get("precision", "32-true") not in FULL_PRECISION else {}),
    }
