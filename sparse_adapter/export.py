"""Export a trained LoRA or IA³ adapter to PEFT's format, so ``peft.PeftModel.from_pretrained`` loads it.

    python -m sparse_adapter.export <run dir or adapter.safetensors> --peft <out dir> [--force]

Our LoRA is PEFT's: ``A`` is (r, in), ``B`` is (out, r), the update is ``(alpha / r) · B A x``
with dropout on ``x``, so ``r``, ``lora_alpha`` and ``lora_dropout`` carry over one to one and the
factors are copied as they are (pruned entries stay exact zeros). The task head goes into
``modules_to_save``. IA³ vectors become PEFT's ``ia3_l`` (keys and values: their Linear's output;
the FFN activation: the input of the Linear it feeds, a PEFT ``feedforward_module``). A prefix of a
decoder-only causal LM becomes PEFT's prefix tuning (``prompt_embeddings``: per virtual token, every
layer's key then value); PEFT gives the sequence the positions after the prefix (n, n+1, ...), ours
starts it at 0, so PEFT reproduces our logits when called with ``position_ids = arange(L) - n`` (it
adds n back) and differs by that shift otherwise. Encoders, encoder–decoders and classification
heads are refused with the reason (``PREFIX_REFUSALS``). Only the adapter file is read; PEFT itself
is not needed to export.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sparse_adapter.adapters.layouts import layouts_of_type, sliced_names
from sparse_adapter import arguments as check
from sparse_adapter.errors import ConfigError
from sparse_adapter.adapter_file import read_adapter
from sparse_adapter.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"


def peft_task_type(task_head: str | None) -> str | None:
    """PEFT's task type for one of our task heads (``backbones.TASK_HEADS``)."""
    from sparse_adapter.backbones import TASK_HEADS  # transformers: only when a file is exported

    return getattr(TASK_HEADS.get(task_head), "peft_task_type", None)


def refuse_slices(metadata: dict, variant: str) -> None:
    """A target that is a slice of a fused projection (GPT-2's query/key/value in c_attn) has no PEFT form."""
    model_type = metadata["backbone"]["model_type"]
    sliced = sorted(set(metadata["adapter_config"].get("targets", [])) & sliced_names(model_type))
    if sliced:
        raise ConfigError(
            f"export --peft: {variant} on {', '.join(sliced)} of '{model_type}' updates a slice of a fused "
            "projection, which PEFT (whole modules) cannot express; target the fused module by its name (adapter.targets=[<module name>]) to export"
        )


def lora_state(tensors: dict, metadata: dict) -> tuple[dict, dict]:
    """PEFT's LoRA: the factors copied as they are; target_modules = exactly the wrapped modules."""
    refuse_slices(metadata, "LoRA")
    config = metadata["adapter_config"]
    state = {f"base_model.model.{name}.weight": t.contiguous() for name, t in tensors.items()}
    wrapped = sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith(".lora_A")})
    fields = {"peft_type": "LORA", "r": config["r"], "lora_alpha": config["alpha"], "lora_dropout": config["dropout"],
              "target_modules": exact(wrapped), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "init_lora_weights": True}
    return state, fields


def ia3_targets(name: str, model_type: str, by_layout: bool) -> tuple[str, bool]:
    """(the module PEFT's IA³ scales for our vector ``name``, whether it is a feedforward one).

    Module-name targets scale that module's output, as PEFT outside ``feedforward_modules``. Layout
    names: keys and values, the output of the same Linear; the FFN activation, the input of the
    Linear it feeds (PEFT's feedforward scaling): fc2 or down_proj directly, BERT's intermediate
    module through the block's output Linear.
    """
    path = name.removesuffix(".scale")
    if not by_layout:
        return path, False
    for layout in layouts_of_type(model_type).values():
        head, marker, rest = path.partition(f"{layout.blocks}.")
        if not marker or "." not in rest:
            continue
        index, relative = rest.split(".", 1)
        block = f"{head}{layout.blocks}.{index}"
        for target, scaled in layout.scaled.items():
            if scaled == relative:
                return (f"{block}.{layout.linears['output']}", True) if target == "ffn" else (path, False)
        if relative in layout.scaled_input.values():
            return path, True
    raise ConfigError(f"export --peft: cannot place the IA³ vector {name} in a {model_type} model")


def ia3_state(tensors: dict, metadata: dict) -> tuple[dict, dict]:
    """PEFT's IA³: ``ia3_l`` is (out, 1) for a scaled output and (1, in) for a scaled feedforward input."""
    refuse_slices(metadata, "IA³")
    model_type = metadata["backbone"]["model_type"]
    abstract = {n for layout in layouts_of_type(model_type).values() for n in (*layout.scaled, *layout.scaled_input)}
    targets_named = set(metadata["adapter_config"].get("targets", []))
    if targets_named & abstract and targets_named - abstract:
        raise ConfigError(f"export --peft: IA³ targets {sorted(targets_named)} mix layout names and module names; export one kind")
    state, targets, feedforward = {}, [], []
    for name, tensor in tensors.items():
        module, is_feedforward = ia3_targets(name, model_type, by_layout=bool(targets_named & abstract))
        state[f"base_model.model.{module}.ia3_l"] = (tensor.view(1, -1) if is_feedforward else tensor.view(-1, 1)).contiguous()
        targets.append(module)
        if is_feedforward:
            feedforward.append(module)
    fields = {"peft_type": "IA3", "target_modules": exact(targets), "feedforward_modules": exact(feedforward),
              "fan_in_fan_out": False, "init_ia3_weights": True}
    return state, fields


# why a prefix has no PEFT form, by what the model is (PEFT 0.21 and 0.22, transformers 5)
PREFIX_REFUSALS = {
    "encoder": "it is an encoder: PEFT prefix tuning hands the prefix to the model as past key values, which "
               "transformers 5's encoders refuse under PEFT 0.21 (PEFT raises 'Model does not support past key "
               "values') and, from PEFT 0.22, take as a cache that moves every position past the prefix; a folder "
               "for it would not load under PEFT 0.21",
    "encoder-decoder": "it is an encoder-decoder: PEFT 0.21 prefix tuning prefixes the decoder's self-attention "
                       "only (no encoder, no cross-attention prefix) and moves the decoder's positions past the "
                       "prefix, while ours prefixes every chosen part position-free, so the folder would compute "
                       "another function",
    "head": "PEFT 0.21 prefix tuning for {task} heads looks for a forward argument named past_key_values, which "
            "transformers 5 renamed cache, so PeftModel raises for every architecture (from PEFT 0.22 it runs, with "
            "the sequence's positions moved past the prefix); causal-LM runs (task=xsum_lm) export, and PEFT 0.21 "
            "and 0.22 load them alike",
    "reparametrised": "its prefix is still reparametrised through an MLP (ours: one per layer, PEFT's: shared); "
                      "merge it first with sparse_adapter.adapters.base.merge_adapters, as train.py does before saving",
}


def prefix_refusal(model_type: str, task_head: str | None, reparametrised: bool) -> str | None:
    """The reason ``model_type``'s prefix cannot be expressed in PEFT's terms, or None."""
    parts = layouts_of_type(model_type)
    if set(parts) == {"encoder"}:
        return PREFIX_REFUSALS["encoder"]
    if set(parts) != {"decoder"}:
        return PREFIX_REFUSALS["encoder-decoder"]
    if task_head != "causal-lm":
        return PREFIX_REFUSALS["head"].format(task=task_head)
    return PREFIX_REFUSALS["reparametrised"] if reparametrised else None


def prefix_state(tensors: dict, metadata: dict) -> tuple[dict, dict]:
    """PEFT's prefix tuning: ``prompt_embeddings`` (n, layers · 2 · width), row p = every layer's key p then value p
    (PEFT views it as (n, layers · 2, heads, head size), our prefix matrices as (n, heads, head size))."""
    model_type = metadata["backbone"]["model_type"]
    reparametrised = any(not name.endswith((".prefix_key", ".prefix_value")) for name in tensors)
    why = prefix_refusal(model_type, (metadata.get("head") or {}).get("task_head"), reparametrised)
    if why:
        raise ConfigError(f"export --peft: a prefix on '{model_type}' has no PEFT form: {why}")
    layout = layouts_of_type(model_type)["decoder"]
    blocks, attention = re.escape(layout.blocks), re.escape(layout.self_attention)
    pattern = re.compile(rf"(?:^|\.){blocks}\.(\d+)\.{attention}\.prefix_(key|value)$")
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        found = pattern.search(name)
        if found is None:
            raise ConfigError(f"export --peft: cannot place the prefix tensor {name} in a {model_type} model")
        by_layer.setdefault(int(found.group(1)), {})[found.group(2)] = tensor
    layers = metadata["backbone"].get("num_hidden_layers")
    if sorted(by_layer) != list(range(layers or 0)) or any(set(kv) != {"key", "value"} for kv in by_layer.values()):
        raise ConfigError(f"export --peft: PEFT prefixes every layer; the file's prefixes cover layers "
                          f"{sorted(by_layer)} of {layers}")
    shapes = {tuple(t.shape) for kv in by_layer.values() for t in kv.values()}
    if len(shapes) != 1:
        raise ConfigError(f"export --peft: PEFT needs one prefix shape for every layer, keys and values; "
                          f"the file has {sorted(shapes)}")
    length, width = shapes.pop()
    rows = torch.cat([torch.cat([by_layer[i]["key"], by_layer[i]["value"]], dim=1) for i in range(layers)], dim=1)
    fields = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": length, "num_layers": layers, "token_dim": width,
              "encoder_hidden_size": width, "prefix_projection": False, "num_transformer_submodules": 1}
    return {"prompt_embeddings": rows.contiguous()}, fields


def exact(names: list[str]) -> str:
    """A PEFT target regex matching exactly these module names (PEFT full-matches a string pattern)."""
    return "(" + "|".join(re.escape(name) for name in sorted(set(names))) + ")"


# adapter name -> (which of a file's tensors are the adapter's, (those tensors, metadata) -> (PEFT state, adapter_config fields))
EXPORTERS = {
    "lora": (lambda name: ".lora_" in name, lora_state),
    "ia3": (lambda name: name.endswith(".scale"), ia3_state),
    "prefix": (lambda name: ".prefix_" in name or name.endswith((".embedding", ".mlp.0.weight", ".mlp.0.bias",
                                                                 ".mlp.2.weight", ".mlp.2.bias")), prefix_state),
}
PROMPT_LEARNING = {"prefix"}  # PEFT keeps the model itself (not a tuner wrapper) under base_model
# why a variant has no PEFT counterpart (said in the refusal)
NOT_EXPORTABLE = {
    **dict.fromkeys(("houlsby", "pfeiffer", "parallel"), "PEFT 0.21 has no bottleneck adapters"),
    "mam": "PEFT 0.21 has no bottleneck adapters, so MAM's parallel part has no PEFT form",
    "fusion": "PEFT 0.21 has no AdapterFusion",
}
# what the user must know about a variant's PEFT folder (logged as a warning on export)
NOTES = {
    "prefix": "export --peft: PEFT's prefix tuning starts the sequence at position n (the prefix length), ours at 0; "
              "call the PEFT model with position_ids=arange(L)-n (PEFT adds n) to get the trained model's logits",
}


def check_target(out: Path, force: bool) -> None:
    """A folder that already holds files (an earlier export, a user's own config) is never overwritten unasked."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export --peft: {out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ConfigError(f"export --peft: {out} is not empty (holds {shown}); choose an empty folder, or pass --force to overwrite")


def export_peft(source: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for PEFT into ``out_dir``.

    A non-empty ``out_dir`` is refused unless ``force``; each file is written atomically.
    """
    check.path(source, "source"), check.path(out_dir, "out_dir"), check.flag(force, "force")
    out = Path(out_dir)
    check_target(out, force)
    source = Path(source)
    path = source / ADAPTER_FILE if source.is_dir() else source
    tensors, _, metadata = read_adapter(path)
    adapter = metadata.get("adapter")
    if adapter not in EXPORTERS:
        why = f" ({NOT_EXPORTABLE[adapter]})" if adapter in NOT_EXPORTABLE else ""
        raise ConfigError(f"export --peft: '{path}' holds adapter={adapter}; only {', '.join(EXPORTERS)} map to PEFT{why}")
    backbone, head = metadata["backbone"], metadata.get("head") or {}
    is_adapter, convert = EXPORTERS[adapter]
    odd = [n for n in tensors if is_adapter(n) and adapter == "lora" and not n.endswith((".lora_A", ".lora_B"))]
    if odd:
        raise ConfigError(f"export --peft: unexpected LoRA tensor {odd[0]}")
    state, fields = convert({n: t for n, t in tensors.items() if is_adapter(n)}, metadata)
    head_modules, root = [], "base_model." if adapter in PROMPT_LEARNING else "base_model.model."
    for name, tensor in tensors.items():
        if is_adapter(name):
            continue
        if "." not in name:
            raise ConfigError(f"export --peft: tensor {name} is not inside a module")
        head_modules.append(name.split(".", 1)[0])
        state[f"{root}{name}"] = tensor.contiguous()
    peft_config = {
        **fields,
        "task_type": peft_task_type(head.get("task_head")),
        "base_model_name_or_path": backbone.get("name") or None,
        "modules_to_save": sorted(set(head_modules)),
        "inference_mode": True,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "adapter_model.safetensors") as temporary:
            save_file(state, str(temporary), metadata={"format": "pt"})
        write_json_atomic(peft_config, out / "adapter_config.json")
    except OSError as error:
        raise ConfigError(f"export --peft: cannot write {out} ({error.strerror or error})") from error
    if adapter in NOTES:
        log.warning(NOTES[adapter])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_adapter.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run directory (holding adapter.safetensors) or an adapter file")
    parser.add_argument("--peft", required=True, metavar="OUT_DIR", help="write a PEFT adapter folder here (empty or new)")
    parser.add_argument("--force", action="store_true", help="overwrite the files of a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = export_peft(args.source, args.peft, force=args.force)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with peft.PeftModel.from_pretrained(model, '{out}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
