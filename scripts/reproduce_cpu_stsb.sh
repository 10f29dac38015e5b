#!/usr/bin/env bash
# Table 1 (+ Large-Sparse r=128) on STS-B at a larger CPU budget than scripts/reproduce_cpu.sh:
# STS-B is the one task where MiniLM adapters learn within a CPU budget, so it is where the pruners
# can separate. MiniLM, 1 seed, 2 epochs over the first 2,000 training rows (126 steps, four times
# the main grid's), dev set evaluated twice per epoch. Resumable like the main grid (skip_finished).
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}"
out="${1:-results/cpu-stsb/sweep}"
budget=(hydra.sweeper.params.seed=42 hydra.sweeper.params.task=stsb trainer.max_epochs=2 data.max_train_samples=2000
        trainer.val_check_interval=0.5 logger=csv trainer.enable_progress_bar=false "hydra.sweep.dir=$out")
py=.venv/bin/python
$py train.py -m experiment=table1 "hydra.sweeper.params.row='dense,snip,random,magnitude,er,grasp'" optimizer.lr=1e-3 "${budget[@]}"
$py train.py -m experiment=table3 hydra.sweeper.params.row=large_sparse2 optimizer.lr=1e-3 "${budget[@]}"
$py -m sparse_adapter.report "$out" --out "$(dirname "$out")"
