"""Export a trained LoRA adapter to PEFT's format, so ``peft.PeftModel.from_pretrained`` loads it.

    python -m sparse_adapter.export <run dir or adapter.safetensors> --peft <out dir> [--force]

Our LoRA is PEFT's: ``A`` is (r, in), ``B`` is (out, r), the update is ``(alpha / r) · B A x``
with dropout on ``x``, so ``r``, ``lora_alpha`` and ``lora_dropout`` carry over one to one and the
factors are copied as they are (pruned entries stay exact zeros). The task head goes into
``modules_to_save``. Only the adapter file is read; PEFT itself is not needed to export.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from safetensors.torch import save_file

from sparse_adapter.adapters.layouts import LAYOUTS
from sparse_adapter.errors import ConfigError
from sparse_adapter.adapter_file import read_adapter
from sparse_adapter.io import atomic_path, write_json_atomic

PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "question-answering": "QUESTION_ANS", "seq2seq-lm": "SEQ_2_SEQ_LM"}
ADAPTER_FILE = "adapter.safetensors"


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
    out = Path(out_dir)
    check_target(out, force)
    source = Path(source)
    path = source / ADAPTER_FILE if source.is_dir() else source
    tensors, _, metadata = read_adapter(path)
    if metadata.get("adapter") != "lora":
        raise ConfigError(f"export --peft: '{path}' holds adapter={metadata.get('adapter')}; only LoRA maps to PEFT")
    config, backbone, head = metadata["adapter_config"], metadata["backbone"], metadata.get("head") or {}
    if backbone["model_type"] not in LAYOUTS:
        raise ConfigError(f"export --peft: no layout for backbone '{backbone['model_type']}'")
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "adapter_model.safetensors") as temporary:
            save_file(state, str(temporary), metadata={"format": "pt"})
        write_json_atomic(peft_config, out / "adapter_config.json")
    except OSError as error:
        raise ConfigError(f"export --peft: cannot write {out} ({error.strerror or error})") from error
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
