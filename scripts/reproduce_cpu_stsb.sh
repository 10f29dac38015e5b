#!/usr/bin/env bash
# Table 1 (+ Large-Sparse r=128) on STS-B at a larger CPU budget than scripts/reproduce_cpu.sh:
# STS-B is the one task where MiniLM adapters learn within a CPU budget, so it is where the pruners
# can separate. MiniLM, 1 seed, one epoch over the whole training set (5,749 rows, all genres; 180
# steps, 5.6 times the main grid's), lr 5e-4, dev set evaluated twice. Resumable (skip_finished).
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}"
out="${1:-results/cpu-stsb/sweep}"
budget=(hydra.sweeper.params.seed=42 hydra.sweeper.params.task=stsb trainer.max_epochs=1
        trainer.val_check_interval=0.5 logger=csv trainer.enable_progress_bar=false "hydra.sweep.dir=$out")
py=.venv/bin/python
$py train.py -m experiment=table1 "hydra.sweeper.params.row='dense,snip,random,magnitude,er,grasp'" optimizer.lr=5e-4 "${budget[@]}"
$py train.py -m experiment=table3 hydra.sweeper.params.row=large_sparse2 optimizer.lr=5e-4 "${budget[@]}"
$py -m paper.report "$out" --out "$(dirname "$out")"
