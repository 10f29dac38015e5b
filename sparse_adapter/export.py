"""Export a trained LoRA adapter to PEFT's format, so ``peft.PeftModel.from_pretrained`` loads it.

    python -m sparse_adapter.export <run dir or adapter.safetensors> --peft <out dir>

Our LoRA is PEFT's: ``A`` is (r, in), ``B`` is (out, r), the update is ``(alpha / r) · B A x``
with dropout on ``x``, so ``r``, ``lora_alpha`` and ``lora_dropout`` carry over one to one and the
factors are copied as they are (pruned entries stay exact zeros). The task head goes into
``modules_to_save``. Only the adapter file is read; PEFT itself is not needed to export.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from safetensors.torch import save_file

from sparse_adapter.adapters.layouts import sliced_names
from sparse_adapter.errors import ConfigError
from sparse_adapter.adapter_file import read_adapter

PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "question-answering": "QUESTION_ANS", "seq2seq-lm": "SEQ_2_SEQ_LM"}
ADAPTER_FILE = "adapter.safetensors"


def export_peft(source: str | Path, out_dir: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for PEFT into ``out_dir``."""
    source = Path(source)
    path = source / ADAPTER_FILE if source.is_dir() else source
    tensors, _, metadata = read_adapter(path)
    if metadata.get("adapter") != "lora":
        raise ConfigError(f"export --peft: '{path}' holds adapter={metadata.get('adapter')}; only LoRA maps to PEFT")
    config, backbone, head = metadata["adapter_config"], metadata["backbone"], metadata.get("head") or {}
    sliced = sorted(set(config.get("targets", [])) & sliced_names(backbone["model_type"]))
    if sliced:
        raise ConfigError(
            f"export --peft: LoRA on {', '.join(sliced)} of '{backbone['model_type']}' updates a slice of a fused "
            "projection, which PEFT's LoRA (whole modules) cannot express; target the fused module by its name (adapter.targets=[<module name>]) to export"
        )
    # exactly the modules that hold LoRA factors (encoder-decoders: only the parts that got adapters)
    wrapped = sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith(".lora_A")})
    target_modules = "(" + "|".join(re.escape(name) for name in wrapped) + ")"
    state, head_modules = {}, []
    for name, tensor in tensors.items():
        if name.endswith((".lora_A", ".lora_B")):
            state[f"base_model.model.{name}.weight"] = tensor.contiguous()
        elif ".lora_" in name:
            raise ConfigError(f"export --peft: unexpected LoRA tensor {name}")
        else:
            if "." not in name:
                raise ConfigError(f"export --peft: tensor {name} is not inside a module")
            head_modules.append(name.split(".", 1)[0])
            state[f"base_model.model.{name}"] = tensor.contiguous()
    peft_config = {
        "peft_type": "LORA",
        "task_type": PEFT_TASK_TYPES.get(head.get("task_head")),
        "base_model_name_or_path": backbone.get("name") or None,
        "r": config["r"],
        "lora_alpha": config["alpha"],
        "lora_dropout": config["dropout"],
        "target_modules": target_modules,
        "modules_to_save": sorted(set(head_modules)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_adapter.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run directory (holding adapter.safetensors) or an adapter file")
    parser.add_argument("--peft", required=True, metavar="OUT_DIR", help="write a PEFT adapter folder here")
    args = parser.parse_args(argv)
    try:
        out = export_peft(args.source, args.peft)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with peft.PeftModel.from_pretrained(model, '{out}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
