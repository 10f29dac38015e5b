#!/usr/bin/env bash
# A reduced reproduction of the paper's Tables 1, 2 and 3 that fits a 2-core CPU (budget in RESULTS.md):
# MiniLM, 1 seed, 1 epoch over at most 1,000 training rows per task, dev evaluated twice per epoch.
# Resumable: jobs whose folder holds a complete summary.json are skipped (skip_finished in the
# experiment files), so re-running this script continues an interrupted grid.
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}"
out="${1:-results/cpu/sweep}"   # committed without weights (.gitignore), so a later checkout resumes it
budget=(hydra.sweeper.params.seed=42 trainer.max_epochs=1 data.max_train_samples=1000
        trainer.val_check_interval=0.5 logger=csv trainer.enable_progress_bar=false "hydra.sweep.dir=$out")
py=.venv/bin/python
$py train.py -m experiment=table1 "hydra.sweeper.params.row='dense,snip,random,magnitude,er,grasp'" optimizer.lr=1e-3 "${budget[@]}"
$py train.py -m experiment=table3 "hydra.sweeper.params.row='large_sparse2,large_sparse3,large_sparse4'" optimizer.lr=1e-3 "${budget[@]}"
$py train.py -m experiment=table1 hydra.sweeper.params.row=finetune optimizer.lr=5e-5 "${budget[@]}"
$py train.py -m experiment=table2 "hydra.sweeper.params.row='snip_s20,snip_s60,snip_s80'" optimizer.lr=1e-3 "${budget[@]}"
$py -m paper.report "$out" --out results/cpu
