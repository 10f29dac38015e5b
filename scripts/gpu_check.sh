#!/usr/bin/env bash
# Issue 25: the CUDA paths the CPU machine never runs, in under 8 minutes on one GPU; one JSON of results.
#   bash scripts/gpu_check.sh [out.json]        (on a machine with a CUDA GPU; SPARSE_ADAPTER_DATA set or ../shared/data)
# 1. benchmarks/step_time.py --device cuda: fp32 vs bf16-autocast steps and forwards, attention kernels, pruning cost
# 2. the suite's GPU-marked tests: 16-mixed with GradScaler-skipped steps and masks held, bf16-mixed, GraSP CPU vs CUDA
# 3. a short MRPC job on MiniLM with trainer.precision=auto (bf16-mixed on a bf16 GPU), its summary
# 4. (issue 33) NF4 on CUDA: the GPU-marked quantization tests and a short tiny-Llama NF4 LoRA job (bitsandbytes' CUDA kernels)
# 5. (issue 33) benchmarks/memory.py --device cuda at the Llama-3.2-1B shape: max allocated of a LoRA step and of SNIP,
#    GraSP, SynFlow, in fp32, NF4 and NF4 with a bf16 body (QLoRA's recipe)
# 6. (issue 33) trainer=fsdp (FSDP2, NCCL) on 2 GPUs for 10 steps; skipped with fewer than 2 GPUs
# The venv: scripts/setup.sh installs the CPU torch; on a GPU machine set PYTHON to an interpreter whose torch has CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
export SPARSE_ADAPTER_DATA="${SPARSE_ADAPTER_DATA:-../shared/data}" WANDB_MODE=offline HF_HUB_OFFLINE=1
py="${PYTHON:-.venv/bin/python}"
out="${1:-gpu_check.json}"
work="$(mktemp -d)"
started=$(date +%s)
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || { echo "error: no CUDA device visible to $py" >&2; exit 3; }
timeout 150 $py benchmarks/step_time.py --device cuda --steps 8 --warmup 2 --out "$work/step_time.json" > "$work/step_time.log" 2>&1
bench=$?
timeout 120 $py -m pytest -q -n 0 -m gpu tests/test_gpu.py tests/test_quantization.py --junitxml="$work/gpu_tests.xml" > "$work/gpu_tests.log" 2>&1
tests=$?
timeout 120 $py train.py task=mrpc trainer.max_epochs=1 data.max_train_samples=1024 trainer.accelerator=gpu \
  logger=csv "hydra.run.dir=$work/mrpc" > "$work/mrpc.log" 2>&1
job=$?
timeout 60 $py train.py backbone=tiny-llama backbone.quantization=nf4 backbone.compute_dtype=bfloat16 adapter=lora task=rte \
  trainer.accelerator=gpu trainer.max_steps=20 data.max_train_samples=256 logger=csv "hydra.run.dir=$work/nf4" > "$work/nf4.log" 2>&1
nf4=$?
timeout 200 $py benchmarks/memory.py --device cuda --shapes llama-3.2-1b --precisions fp32 nf4 nf4-bf16-body --measures train snip grasp synflow --out "$work/memory.json" > "$work/memory.log" 2>&1
memory=$?
fsdp=skipped
if [ "$($py -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 90 $py train.py backbone=tiny-llama adapter=lora task=rte trainer=fsdp trainer.accelerator=gpu trainer.devices=2 \
    trainer.max_steps=10 data.max_train_samples=256 logger=csv "hydra.run.dir=$work/fsdp" > "$work/fsdp.log" 2>&1
  fsdp=$?
fi
$py - "$work" "$out" "$bench" "$tests" "$job" "$started" "$nf4" "$memory" "$fsdp" <<'PY'
import json, sys, time, pathlib, torch
work, out, bench, tests, job, started, nf4, memory, fsdp = sys.argv[1:]
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
    "nf4_job": {"exit": int(nf4), **{k: (read(work / "nf4" / "summary.json") or {}).get(k) for k in ("quantization", "metrics", "adapter_weights_kept")},
                "log_tail": (work / "nf4.log").read_text()[-800:] if int(nf4) else ""},
    "memory_1b": {"exit": int(memory), "table": (read(work / "memory.json") or {}).get("table"),
                  "log_tail": (work / "memory.log").read_text()[-800:] if int(memory) else ""},
    "fsdp_2gpu": {"exit": fsdp, **({k: (read(work / "fsdp" / "summary.json") or {}).get(k) for k in ("adapter_weights_kept", "metrics", "global_steps")}
                                   if fsdp != "skipped" else {})},
    "total_seconds": time.time() - int(started),
}
pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: result[k] for k in ("gpu", "total_seconds")}), "->", out)
PY
