"""Peak memory of one LoRA training step and of SNIP, GraSP and SynFlow scoring at real shapes, fp32 and NF4.

    python benchmarks/memory.py                          # every shape × precision × measure, one fresh process each
    python benchmarks/memory.py --shapes qwen2.5-0.5b --measures train snip
    python benchmarks/memory.py --device cuda            # CUDA: max allocated instead of RSS

Models are built from the real configs' shapes (Qwen2.5-0.5B, Llama-3.2-1B; written out below, nothing is
downloaded) with random weights, as causal LMs; LoRA r=16 (alpha 32) on every projection of every block
(q, k, v, o, gate, up, down, as QLoRA), N(0, 0.02) factors (non-zero, so SNIP/GraSP see no ties).
One batch of 1 × 512 random tokens with the LM loss. Precisions: fp32; bf16-body (``backbone.dtype=bfloat16``: the
frozen model stored in bf16, LoRA in fp32, no autocast); nf4 (NF4 body, fp32 compute, everything else fp32); nf4-bf16
(NF4 body with bf16 compute and the step under bf16 autocast, as ``precision=auto`` runs it where the CPU or GPU has bf16
units: fp32 weights and adapters); nf4-bf16-body (``backbone.quantization=nf4 backbone.compute_dtype=bfloat16
backbone.dtype=bfloat16``: the NF4 body, everything bitsandbytes does not quantize (embedding, tied head, norms) stored
in bf16, LoRA in fp32, no autocast: QLoRA's recipe, as a model loaded with ``dtype=bfloat16`` runs it). Measures:
  train    two forward + backward + AdamW steps (masks held by ``hold_masks``, as in training), in train mode and
           without gradient checkpointing (the library's default, ``backbone.gradient_checkpointing=false``); the loss
           is the SFT task's, as its ``training_step`` computes it (``sparse_adapter.lm_loss``: the head in chunks). The peak is the
           second step's (training's steady state: AdamW's two moments resident through forward and backward); the
           first step's, before any optimizer state exists, is reported as ``first_step_peak_mib``
  train_gc the same two steps with gradient checkpointing (``backbone.gradient_checkpointing=true``; QLoRA's recipe,
           PEFT's ``prepare_model_for_kbit_training`` turns it on by default)
  snip / grasp / synflow   ``prune`` at s=0.4 over ``--batches`` such batches, in eval mode (as PruneAtInit scores).
           GraSP's Hessian-gradient pass runs block by block (``sparse_adapter.pruning.blockwise``: one block's
           graph at a time, recomputed from its input; SDPA's math kernel)
  baseline the process with torch, transformers, bitsandbytes and the library imported, no model
Peak: on CPU the peak resident set (VmHWM) of a fresh process (large allocations mmapped, see ALLOCATOR), reset (``/proc/self/clear_refs``) once the model
is built and quantized, so the number is the operation's peak with the model resident, not the fp32 build's
transient before NF4 quantization; the model's resident size before the operation is reported beside it.
On CUDA, ``torch.cuda.max_memory_allocated`` after a reset. Goal (issue 33): every scorer's peak <= the
training step's peak, and NF4's training peak <= 0.4 × fp32's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # from the models' config.json (hub), shapes only
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
}
PRECISIONS = ("fp32", "bf16-body", "nf4", "nf4-bf16", "nf4-bf16-body")
MEASURES = ("train", "train_gc", "snip", "grasp", "synflow", "baseline")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQUENCE = 512
# glibc raises its mmap threshold after each large free, so later large tensors come from heap arenas that are never
# given back: the peak RSS would then count freed graphs of earlier batches. A fixed threshold keeps every large
# tensor mmapped (returned on free), for every measure alike: the peak is what the tensors need.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def resident_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resident_kib("VmHWM") / 1024


def current_mib(device: str) -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if device == "cuda" else resident_kib() / 1024


def build(shape: str, precision: str, device: str):
    """The causal LM with LoRA attached (fp32 factors, as ``attach`` makes them on any body), stored in bf16 for the
    ``-body`` precisions and quantized for the ``nf4`` ones, as the library builds it; prunable names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparse_adapter.adapters import LoRAConfig
    from sparse_adapter.quantization import Quantization, quantize_backbone

    settings = dict(SHAPES[shape])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision.endswith("-body") else torch.float32
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    for parameter in model.parameters():  # causal-LM heads are pretrained: frozen, as the body
        parameter.requires_grad_(False)
    prunable = LoRAConfig(r=16, alpha=32, targets=TARGETS, init="bert").attach(model)
    if precision.startswith("nf4"):
        quantize_backbone(model, Quantization("nf4", compute_dtype="float32" if precision == "nf4" else "bfloat16"))
    model.to(device)
    return model, prunable


def batch(vocab: int, device: str, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, SEQUENCE), generator=generator).to(device)
    return {"input_ids": ids, "labels": ids}


def measure(shape: str, precision: str, what: str, device: str, batches: int = 2) -> dict:
    import gc

    import torch

    from sparse_adapter.backbones import checkpointing
    from sparse_adapter.hold import hold_masks
    from sparse_adapter.pruning import PrunerConfig, prune

    if what == "baseline":
        import bitsandbytes  # noqa: F401  (what build() imports, nothing built)
        from transformers import AutoModelForCausalLM  # noqa: F401

        from sparse_adapter.adapters import LoRAConfig  # noqa: F401
        from sparse_adapter.quantization import quantize_backbone  # noqa: F401

        gc.collect()

        return {"shape": shape, "precision": precision, "measure": what, "device": device,
                "peak_mib": round(current_mib(device), 1), "threads": torch.get_num_threads()}
    model, prunable = build(shape, precision, device)
    vocab = SHAPES[shape]["vocab_size"]
    named = dict(model.named_parameters())
    params = {n: named[n] for n in prunable}
    gc.collect()
    resident = current_mib(device)
    reset_peak(device)
    start = time.perf_counter()
    bf16 = precision == "nf4-bf16"  # the step as precision=auto runs it on bf16 hardware: bf16-mixed autocast
    training = what in ("train", "train_gc")
    if training:
        checkpointing(model, what == "train_gc")
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
        masks = {n: torch.rand(p.shape, device=p.device) >= 0.4 for n, p in params.items()}
        hold = hold_masks(optimizer, params, masks)
        for step in range(2):  # the first step creates AdamW's moments; every later step holds them throughout
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = _tempered_loss(model, batch(vocab, device, step), 1.0)
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:
                first_step = peak_mib(device)
        hold.remove()
    else:
        model.eval()
        scoring = [batch(vocab, device, seed) for seed in range(batches)]
        config = PrunerConfig(what, batches=len(scoring), **({"iterations": 1} if what == "synflow" else {}))
        masks = prune(params, 0.4, config, loss_fn=lambda b, temperature=1.0: _tempered_loss(model, b, temperature),
                      batches=scoring, seed=0, model=model)
        assert sum(int(m.sum()) for m in masks.values()) > 0
    seconds = time.perf_counter() - start
    extra = {"first_step_peak_mib": round(first_step, 1)} if training else {}
    return {"shape": shape, "precision": precision, "measure": what, "device": device, "peak_mib": round(peak_mib(device), 1), **extra,
            "model_resident_mib": round(resident, 1), "seconds": round(seconds, 2), "threads": torch.get_num_threads(),
            "adapter_weights": sum(p.numel() for p in params.values()), "scoring_batches": 0 if training else batches}


def _tempered_loss(model, batch, temperature: float):
    """The next-token loss with logits / T (GraSP's temperature; 1 for training and the other scorers), as the SFT task's
    ``training_step`` computes it: the LM head and cross-entropy in token chunks (``sparse_adapter.lm_loss``)."""
    from sparse_adapter.lm_loss import causal_lm_loss

    return causal_lm_loss(model, batch["input_ids"], None, batch["labels"], temperature)


def weights_mib(shape: str) -> dict:
    """The model's parts in MiB from the config, as ``build`` stores them: the embedding (tied with the LM head; fp32 in
    both precisions, since bitsandbytes quantizes Linear layers only and the head sits outside the body), the body's
    projections (fp32: 4 B a weight; NF4: 0.5 B plus one fp32 absmax per 64 weights) and the fp32 LoRA factors."""
    c = SHAPES[shape]
    hidden, inner, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head_dim = c.get("head_dim", hidden // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inner), (hidden, inner), (inner, hidden)]
    body = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(16 * (i + o) for i, o in shapes)
    mib = 2**20
    return {"embedding": c["vocab_size"] * hidden * 4 / mib, "body_fp32": body * 4 / mib, "body_nf4": body * (0.5 + 4 / 64) / mib,
            "lora": lora * 4 / mib}


def floor_table(results: list[dict]) -> str:
    """Why NF4's training peak cannot reach 0.4× fp32's here: what training adds above the resident model (activations,
    computed in fp32 in both precisions; LoRA gradients; AdamW's moments) plus the process, the packed body and the
    LoRA weights already exceed it, even with the fp32 embedding taken away entirely."""
    by = {(r["shape"], r["precision"], r["measure"]): r for r in results}
    lines = [("| shape | fp32 train peak | 0.4 × fp32 | process (imports) | training above the model (fp32 peak - resident) | NF4 body | "
              "LoRA | embedding fp32 | NF4 floor without the embedding | measured NF4 peak |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        fp32, nf4 = by.get((shape, "fp32", "train")), by.get((shape, "nf4", "train"))
        base = next((r for r in results if r["measure"] == "baseline"), None)
        if not (fp32 and nf4 and base):
            continue
        w = weights_mib(shape)
        activations = fp32["peak_mib"] - fp32["model_resident_mib"]
        floor = base["peak_mib"] + activations + w["body_nf4"] + w["lora"]
        lines.append(f"| {shape} | {fp32['peak_mib']:.0f} | {0.4 * fp32['peak_mib']:.0f} | {base['peak_mib']:.0f} | {activations:.0f} "
                     f"| {w['body_nf4']:.0f} | {w['lora']:.0f} | {w['embedding']:.0f} | {floor:.0f} ({floor / fp32['peak_mib']:.2f}×) "
                     f"| {nf4['peak_mib']:.0f} ({nf4['peak_mib'] / fp32['peak_mib']:.2f}×) |")
    return "\n".join(lines)


def checkpointing_table(results: list[dict]) -> str:
    """Each precision's training step with and without gradient checkpointing (``train_gc``) against fp32's, both ways
    and QLoRA's usual comparison (checkpointed against fp32 without); for NF4 with fp32 compute, the floor with
    checkpointing (as ``floor_table``'s, without the fp32 embedding)."""
    by = {(r["shape"], r["precision"], r["measure"]): r for r in results}
    base = next((r for r in results if r["measure"] == "baseline"), None)
    lines = [("| shape | precision | train | train_gc | train / fp32 train | train_gc / fp32 train_gc | train_gc / fp32 train "
              "| floor checkpointed, without the embedding |"), "|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        fp32, fp32_gc = by.get((shape, "fp32", "train")), by.get((shape, "fp32", "train_gc"))
        for precision in PRECISIONS:
            train, train_gc = by.get((shape, precision, "train")), by.get((shape, precision, "train_gc"))
            if not train_gc:
                continue
            floor = "-"
            if base and precision == "nf4" and fp32_gc:
                w = weights_mib(shape)
                value = base["peak_mib"] + fp32_gc["peak_mib"] - fp32_gc["model_resident_mib"] + w["body_nf4"] + w["lora"]
                floor = f"{value:.0f} ({value / fp32_gc['peak_mib']:.2f}×)"

            def ratio(a, b):
                return f"{a['peak_mib'] / b['peak_mib']:.2f}" if a and b and precision != "fp32" else "-"

            peaks = [f"{c['peak_mib']:.0f}" if c else "-" for c in (train, train_gc)]
            lines.append(f"| {shape} | {precision} | {' | '.join(peaks)} | {ratio(train, fp32)} | {ratio(train_gc, fp32_gc)} "
                         f"| {ratio(train_gc, fp32)} | {floor} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def table(results: list[dict]) -> str:
    by = {(r["shape"], r["precision"], r["measure"]): r for r in results}
    lines = [("| shape | precision | model resident MiB | train peak MiB (2nd step) | 1st step | snip | grasp | synflow | scorers <= train "
              "| train / fp32 train |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        for precision in PRECISIONS:
            train = by.get((shape, precision, "train"))
            if train is None:
                continue
            scorers = [by.get((shape, precision, m)) for m in ("snip", "grasp", "synflow")]
            fp32 = by.get((shape, "fp32", "train"))
            ratio = f"{train['peak_mib'] / fp32['peak_mib']:.2f}" if precision != "fp32" and fp32 else ""
            ok = "not all measured" if None in scorers else \
                "yes" if all(s["peak_mib"] <= train["peak_mib"] for s in scorers) else "no"
            cells = [f"{s['peak_mib']:.0f}" if s else "-" for s in scorers]
            first = f"{train['first_step_peak_mib']:.0f}" if "first_step_peak_mib" in train else "-"
            lines.append(f"| {shape} | {precision} | {train['model_resident_mib']:.0f} | {train['peak_mib']:.0f} | {first} | {' | '.join(cells)} "
                         f"| {ok} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--measures", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads per measurement (memory only: any number)")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/memory_<device>.json)")
    parser.add_argument("--batches", type=int, default=2, help="scoring batches (each freed before the next)")
    parser.add_argument("--append", action="store_true", help="merge into the results already in --out (same keys replaced)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child: one measurement, JSON on stdout
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(measure(args.shapes[0], args.precisions[0], args.measures[0], args.device, args.batches)), flush=True)
        return
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"memory_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text())["results"] if args.append and out.is_file() else []
    for shape in sorted(args.shapes, key=lambda s: list(SHAPES).index(s), reverse=True):  # the 1B shape first
        for precision in args.precisions:
            for what in args.measures:
                command = [sys.executable, __file__, "--one", "--shapes", shape, "--precisions", precision, "--measures", what,
                           "--device", args.device, "--threads", str(args.threads), "--batches", str(args.batches)]
                done = subprocess.run(command, check=False, capture_output=True, text=True, env=dict(os.environ, **ALLOCATOR))
                line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
                if line is None:
                    error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"error: {shape} {precision} {what}: {error}", file=sys.stderr)
                    continue
                new = json.loads(line.removeprefix("RESULT "))
                results = [r for r in results if (r["shape"], r["precision"], r["measure"]) != (shape, precision, what)] + [new]
                print(json.dumps(new), flush=True)
                write(out, results)  # after each one
    write(out, results)
    print(tables(results))


BEGIN, END = "<!-- tables written by benchmarks/memory.py: begin -->", "<!-- tables written by benchmarks/memory.py: end -->"


def tables(results: list[dict]) -> str:
    return "\n\n".join(t for t in (table(results), floor_table(results), checkpointing_table(results)) if t)


def write(out: Path, results: list[dict]) -> None:
    """The JSON results and, beside them, the tables in markdown; other keys already in the JSON (notes, earlier rows
    kept by hand) stay, and so does the markdown's hand-written text outside the BEGIN/END markers."""
    kept = json.loads(out.read_text()) if out.is_file() else {}
    kept.update({"results": results, "table": table(results), "nf4_floor": floor_table(results),
                 "checkpointing": checkpointing_table(results)})
    out.write_text(json.dumps(kept, indent=1) + "\n")
    markdown = out.with_suffix(".md")
    text = markdown.read_text() if markdown.is_file() else ""
    block = f"{BEGIN}\n{tables(results)}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = f"{block}\n{text}"
    markdown.write_text(text)


if __name__ == "__main__":
    main()
