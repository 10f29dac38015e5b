#!/usr/bin/env bash
# Issue 25: the CUDA paths the CPU machine never runs, in under 8 minutes on one GPU; one JSON of results.
#   bash scripts/gpu_check.sh [out.json]        (on a machine with a CUDA GPU; SPARSE_ADAPTER_DATA set or ../shared/data)
# 1. benchmarks/step_time.py --device cuda: fp32 vs bf16-autocast steps and forwards, attention kernels, pruning cost
# 2. the suite's GPU-marked tests: 16-mixed with GradScaler-skipped steps and masks held, bf16-mixed, GraSP CPU vs CUDA
# 3. a short MRPC job on MiniLM with trainer.precision=auto (bf16-mixed on a bf16 GPU), its summary
# The venv: scripts/setup.sh installs the CPU torch; on a GPU machine set PYTHON to an interpreter whose torch has CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}" WANDB_MODE=offline HF_HUB_OFFLINE=1
py="${PYTHON:-.venv/bin/python}"
out="${1:-gpu_check.json}"
work="$(mktemp -d)"
started=$(date +%s)
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || { echo "error: no CUDA device visible to $py" >&2; exit 3; }
timeout 240 $py benchmarks/step_time.py --device cuda --steps 10 --warmup 3 --out "$work/step_time.json" > "$work/step_time.log" 2>&1
bench=$?
timeout 150 $py -m pytest -q -n 0 -m gpu tests/test_gpu.py --junitxml="$work/gpu_tests.xml" > "$work/gpu_tests.log" 2>&1
tests=$?
timeout 120 $py train.py task=mrpc trainer.max_epochs=1 data.max_train_samples=1024 trainer.accelerator=gpu \
  logger=csv "hydra.run.dir=$work/mrpc" > "$work/mrpc.log" 2>&1
job=$?
$py - "$work" "$out" "$bench" "$tests" "$job" "$started" <<'PY'
import json, sys, time, pathlib, torch
work, out, bench, tests, job, started = sys.argv[1:]
work = pathlib.Path(work)
def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
summary = read(work / "mrpc" / "summary.json") or {}
result = {
    "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "bf16_supported": torch.cuda.is_bf16_supported(),
    "step_time": {"exit": int(bench), **({k: v for k, v in (read(work / "step_time.json") or {}).items() if k in ("ratios", "median_seconds", "attention_kernels", "peak_memory_mib", "prune_snip_seconds", "prune_grasp_seconds")})},
    "gpu_tests": {"exit": int(tests), "log_tail": (work / "gpu_tests.log").read_text()[-1500:]},
    "mrpc_job": {"exit": int(job), "precision": summary.get("precision"), "metrics": summary.get("metrics"),
                 "wall_seconds": summary.get("wall_seconds"), "log_tail": (work / "mrpc.log").read_text()[-800:] if int(job) else ""},
    "total_seconds": time.time() - int(started),
}
pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: result[k] for k in ("gpu", "total_seconds")}), "->", out)
PY
