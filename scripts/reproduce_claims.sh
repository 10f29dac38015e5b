#!/usr/bin/env bash
# Issue 12: the paper's claims at a budget where MiniLM adapters learn (budget and verdicts in RESULTS.md).
#   bash scripts/reproduce_claims.sh lr     # step 1: lr choice (dense adapter, full fine-tuning; MRPC, STS-B; seed 42)
#   bash scripts/reproduce_claims.sh reference  # full fine-tuning: ours vs a plain PyTorch loop, MRPC, 3 seeds
#   bash scripts/reproduce_claims.sh grid   # step 2: Tables 1-3 with the chosen lrs (conf/experiment/claims*.yaml)
#   bash scripts/reproduce_claims.sh mrpc_variants  # every adapter variant, dense vs SNIP-0.4, on MRPC (seed 42)
#   bash scripts/reproduce_claims.sh variants  # Table 4 rows (seed 42) on all four tasks
#   bash scripts/reproduce_claims.sh pai    # issue 24: PaI checks (SynFlow, shuffle/invert controls, iterative, layer, 2:4), 3 seeds
#                                           # (LANES=2: two 1-thread sweeps side by side; PAI_ROWS=...: which rows)
#   bash scripts/reproduce_claims.sh zero_init  # issue 34: LoRA at PEFT's default init (B = 0): dense, random-0.5, look-ahead SNIP-0.5
#                                           # (MRPC, STS-B, seeds 42-44)
#   bash scripts/reproduce_claims.sh squad  # issue 36: the dense adapter's lr sweep on SQuAD (seed 42), then, once its winner is
#                                           # set in conf/experiment/claims_squad.yaml, dense, SNIP-0.4 and SNIP-0.8 at seeds
#                                           # 42-44; then full fine-tuning's lr sweep and, once set in claims_squad_finetune.yaml,
#                                           # its three seeds (SQUAD_ADAPTER_LRS, SQUAD_FINETUNE_LRS: the lrs swept)
#   bash scripts/reproduce_claims.sh bf16   # issue 25: dense and SNIP-0.4 in bf16-mixed (MRPC, STS-B, 3 seeds) against the fp32 grid
#   bash scripts/reproduce_claims.sh all    # mrpc_variants, lr, reference, grid, variants, pai, bf16: what a fresh session restarts
#   bash scripts/reproduce_claims.sh clean  # drop the checkpoints of finished grid jobs
# Budget, the same for every row: MiniLM, 5 epochs, batch 32 grouped by length, max length 128, attention
# dropout 0 (the CPU cost of attention dropout is in RESULTS.md section 4), dev set evaluated every half
# epoch (in the grid: every quarter epoch for the convergence plot's rows, at epoch ends for the others).
# Resumable: every job folder with a complete summary.json is skipped, and a job killed midway
# resumes from its last.ckpt (callbacks=resumable), so re-running continues.
# Run it from a checkout that stays put (e.g. `git worktree add --detach ../grid` and `cd ../grid`, with
# the output folder as the second argument): Hydra reads conf/ anew for every job, so moving the
# checkout under a running sweep mixes two versions (a new resolver in conf/ stops the old process).
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}"
stage="${1:-grid}"
out="${2:-results/claims}"
py="${PYTHON:-.venv/bin/python}"
plain=(trainer.max_epochs=5 +backbone.config.attention_probs_dropout_prob=0 trainer.val_check_interval=0.5
       logger=csv callbacks=resumable trainer.enable_progress_bar=false skip_finished=true)
budget=("${plain[@]}" data.group_by_length=true)   # batches of similar length: 1.6× (MRPC) to 2.5× (STS-B) faster on CPU
adapter_lr=(optimizer.lr=1e-3)   # the adapters' lr of conf/experiment/claims.yaml (the lr sweep's choice)
lr_chosen() {  # the grid's jobs are named without their lr: one run at a provisional lr would be skipped as finished later
  local experiment="${1:-claims}"
  if grep -q "^# lr: provisional" "conf/experiment/$experiment.yaml"; then
    echo "$stage: waits for the lr choice (set the lr sweep's winner in conf/experiment/$experiment.yaml, then drop the 'lr: provisional' line)" >&2
    return 1
  fi
}
reuse_lr_job() {  # the grid's seed-42 job of a row is its lr sweep's job at the chosen lr: copied, not run again
  $py - "$out/squad" "$1" "$2" <<'PYTHON'
import json, shutil, sys
from pathlib import Path
import yaml
root, experiment, row = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lr = float(yaml.safe_load(Path(f"conf/experiment/{experiment}.yaml").read_text())["optimizer"]["lr"])
sweep, grid = root / "lr" / f"optimizer.lr={lr},row={row},seed=42", root / "grid" / f"row={row},seed=42"
try:
    finished = json.loads((sweep / "summary.json").read_text()).get("status") == "complete"
except (OSError, ValueError):
    finished = False
if finished and not grid.exists():
    shutil.copytree(sweep, grid, ignore=shutil.ignore_patterns("checkpoints"))
    print(f"squad: {grid} is a copy of the lr sweep's finished {sweep.name}")
PYTHON
}
case "$stage" in
  lr)
    $py train.py -m row=dense task=mrpc,stsb seed=42 optimizer.lr=2e-4,5e-4,1e-3,2e-3 "${budget[@]}" "hydra.sweep.dir=$out/lr"
    $py train.py -m row=finetune task=mrpc,stsb seed=42 optimizer.lr=2e-5,5e-5 "${budget[@]}" "hydra.sweep.dir=$out/lr"
    $py -m paper.report "$out/lr" --out "$out/lr-report"
    ;;
  reference)
    for seed in 1 2 3; do  # seed by seed, so that a stopped session leaves finished pairs
      [ -f "$out/reference/plain-mrpc-seed$seed.json" ] || $py benchmarks/reference_finetune.py --task mrpc --seed $seed --lr 5e-5 \
        --attention-dropout 0 --out "$out/reference/plain-mrpc-seed$seed.json"
      # random batches, as the reference loop draws them: the two implementations at exactly one recipe
      $py train.py -m row=finetune task=mrpc seed=$seed optimizer.lr=5e-5 "${plain[@]}" "hydra.sweep.dir=$out/reference"
    done
    $py benchmarks/compare_reference.py "$out/reference" | tee "$out/reference/comparison.md"
    ;;
  grid)
    lr_chosen || exit 0
    # the rows most claims rest on first (3 seeds each), then the rest of Tables 1-3 (seed 42), then the
    # other references that need 3 seeds (SNIP − random at 0.4 and 0.8)
    $py train.py -m experiment=claims_convergence "hydra.sweep.dir=$out/grid"
    $py train.py -m experiment=claims_finetune "hydra.sweep.dir=$out/grid"
    $py train.py -m experiment=claims "hydra.sweep.dir=$out/grid"
    $py train.py -m experiment=claims_references "hydra.sweep.dir=$out/grid"
    $py -m paper.report "$out/grid" --out "$out/report"
    ;;
  mrpc_variants)  # MRPC first (fusion last: it fuses the Pfeiffer adapters of all four tasks)
    table4=(experiment=table4 hydra.sweeper.params.seed=42 "${adapter_lr[@]}" "${budget[@]}" "hydra.sweep.dir=$out/table4")
    $py train.py -m "${table4[@]}" hydra.sweeper.params.task=mrpc \
      "hydra.sweeper.params.row='t4_pfeiffer,t4_pfeiffer_snip,t4_lora,t4_lora_snip,t4_mam,t4_mam_snip'"
    $py train.py -m task=mrpc seed=42 adapter=parallel,prefix,ia3,houlsby pruner=none,snip sparsity=0.4 "${adapter_lr[@]}" \
      "${budget[@]}" "hydra.sweep.dir=$out/variants"
    # prefix tuning and IA³ stay at (or just above) the majority class with the adapters' 1e-3; both usually train ~10x higher
    $py train.py -m task=mrpc seed=42 adapter=prefix,ia3 pruner=none,snip sparsity=0.4 optimizer.lr=1e-2 "${budget[@]}" \
      "hydra.sweep.dir=$out/variants"
    $py train.py -m "${table4[@]}" "hydra.sweeper.params.task='cola,stsb,rte'" \
      "hydra.sweeper.params.row='t4_pfeiffer,t4_pfeiffer_snip'"   # the fusion rows' sources: dense for t4_fusion, SNIP for t4_fusion_snip
    $py train.py -m "${table4[@]}" hydra.sweeper.params.task=mrpc "hydra.sweeper.params.row='t4_fusion,t4_fusion_snip'"
    $py -m paper.report "$out/table4" "$out/variants" --out "$out/variants-report"
    ;;
  zero_init)  # seed first: a grid stopped midway holds whole seeds
    $py train.py -m seed=42,43,44 task=mrpc,stsb row=zi_lora_dense,zi_lora_random_s50,zi_lora_snip_s50 trainer.precision=32-true \
      "${adapter_lr[@]}" "${budget[@]}" "hydra.sweep.dir=$out/zero_init"
    $py -m paper.report "$out/zero_init" --out "$out/zero_init-report"
    ;;
  variants)
    lr_chosen || exit 0
    $py train.py -m experiment=table4 hydra.sweeper.params.seed=42 "${adapter_lr[@]}" "${budget[@]}" "hydra.sweep.dir=$out/table4"
    $py -m paper.report "$out/table4" "$out/variants" --out "$out/variants-report"
    ;;
  pai)  # row by row (each row's 9 jobs end together, so each claim gets its verdict as soon as it can)
    lr_chosen || exit 0
    # LANES=2: two sweeps side by side on disjoint rows, one torch thread each; on 2 cores they finish about
    # 1.3x more jobs per hour than one 2-thread sweep (short grouped batches use a second thread poorly)
    read -ra rows <<< "${PAI_ROWS:-snip_s80_layer snip_shuffle snip_invert snip_s80_iter10 synflow snip_s50 snip_nm24}"
    lanes="${LANES:-1}"
    run_rows() { for row in "$@"; do $py train.py -m experiment=claims_pai "hydra.sweeper.params.row=$row" "hydra.sweep.dir=$out/pai"; done; }
    if [ "$lanes" -gt 1 ]; then
      pids=()
      for ((lane = 0; lane < lanes; lane++)); do
        mine=(); for ((i = lane; i < ${#rows[@]}; i += lanes)); do mine+=("${rows[i]}"); done
        [ ${#mine[@]} -gt 0 ] && { OMP_NUM_THREADS=1 run_rows "${mine[@]}" & pids+=($!); }
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
    else
      run_rows "${rows[@]}"
    fi
    $py -m paper.report "$out/grid" "$out/pai" --out "$out/pai-report"
    ;;
  squad)  # finished jobs are skipped, so re-running goes on where it stopped. The adapters' rows (the paper's SNIP
          # claims) run as soon as their lr is chosen; full fine-tuning's lr sweep and rows follow them
    squad_lr=("hydra.sweeper.params.seed=42" "hydra.sweep.dir=$out/squad/lr")
    $py train.py -m experiment=claims_squad "${squad_lr[@]}" hydra.sweeper.params.row=dense \
      "optimizer.lr=${SQUAD_ADAPTER_LRS:-5e-4,1e-3,2e-3}"
    if lr_chosen claims_squad; then
      reuse_lr_job claims_squad dense
      $py train.py -m experiment=claims_squad "hydra.sweep.dir=$out/squad/grid"
      $py -m paper.report "$out/squad/grid" --out "$out/squad/report"
    fi
    $py train.py -m experiment=claims_squad_finetune "${squad_lr[@]}" "optimizer.lr=${SQUAD_FINETUNE_LRS:-3e-5,5e-5,1e-4}"
    $py -m paper.report "$out/squad/lr" --out "$out/squad/lr-report" --no-plots
    lr_chosen claims_squad && lr_chosen claims_squad_finetune || exit 0
    reuse_lr_job claims_squad_finetune finetune
    $py train.py -m experiment=claims_squad_finetune "hydra.sweep.dir=$out/squad/grid"
    $py -m paper.report "$out/squad/grid" --out "$out/squad/report"
    ;;
  bf16)
    lr_chosen || exit 0
    $py train.py -m experiment=claims_bf16 "hydra.sweep.dir=$out/bf16"
    $py benchmarks/compare_precision.py "$out/grid" "$out/bf16" | tee "$out/bf16/comparison.md"
    ;;
  all) for step in mrpc_variants lr reference grid variants pai bf16 zero_init; do bash "$0" "$step" "$out"; done ;;
  clean)  # finished jobs need no checkpoint (they are never committed: .gitignore)
    for summary in $(find "$out" -name summary.json); do rm -rf "$(dirname "$summary")/checkpoints"; done ;;
  *) echo "usage: $0 lr|reference|grid|mrpc_variants|variants|pai|bf16|zero_init|squad|all|clean [out]" >&2; exit 2 ;;
esac
