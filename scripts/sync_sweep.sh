#!/usr/bin/env bash
# Copy the finished jobs of a sweep (summary, logs, config; no weights) into a folder to commit.
#   bash scripts/sync_sweep.sh multirun/paper-cpu results/cpu/sweep
set -euo pipefail
source="$1"; target="$2"
for job in "$source"/*/; do
  [ -f "$job/summary.json" ] || continue   # unfinished jobs stay behind
  name=$(basename "$job"); mkdir -p "$target/$name"
  (cd "$job" && find . -type f ! -name adapter.safetensors ! -path './wandb/*' ! -path './checkpoints/*' -print0 |
     xargs -0 -I{} cp --parents {} "$OLDPWD/$target/$name/")
done
