"""One training step of a causal-LM task, timed on one thread: the SFT family against the old xsum_lm path.

    python benchmarks/sft_step.py --repo DIR --overrides task=xsum_lm backbone=tiny-llama [--steps 20]

Builds task, module and datamodule from ``train.yaml`` with the overrides exactly as ``tasks.experiment`` does,
takes the first training batches, and times forward + backward + AdamW step (no pruning: a dense LoRA) for
``--steps`` steps after 3 warm-up steps; prints one JSON line (median seconds per step, trained parameters).
Run it once per code tree (``--repo``: this checkout, or a checkout of main), interleaved, with the grid paused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    torch.set_num_threads(1)
    with initialize_config_dir(version_base="1.3", config_dir=str(Path(args.repo).resolve() / "conf")):
        cfg = compose("train", overrides=list(args.overrides))
    task = instantiate(cfg.task, _convert_="object")
    torch.manual_seed(0)
    module = task.module_class()(backbone=instantiate(cfg.backbone, _convert_="object"),
                                 adapter=instantiate(cfg.adapter, _convert_="object"),
                                 optimizer=instantiate(cfg.optimizer, _convert_="object"), task=task)
    data = task.datamodule_class()(task=task, tokenizer=module.tokenizer, data_dir=cfg.data_dir, seed=0,
                                   max_positions=None, **cfg.data)
    data.setup("fit")
    size = cfg.data.batch_size
    batches = [data.collator.train(data.datasets["train"][i * size:(i + 1) * size]) for i in range(4)]
    trained = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    times = []
    for step in range(args.steps + 3):
        batch = batches[step % len(batches)]
        started = time.perf_counter()
        loss = module.scoring_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - started)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    print(json.dumps({"repo": args.repo, "overrides": args.overrides, "median_step_s": statistics.median(times),
                      "trained_params": sum(p.numel() for p in trained), "tokens_per_batch": tokens}))


if __name__ == "__main__":
    main()
