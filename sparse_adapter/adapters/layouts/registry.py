"""Model type -> the layouts of its parts, and the lookups every variant shares.

A new architecture is one family file that registers its ``PARTS`` in ``LAYOUTS`` (imported below for
the built-in ones; a plugin module imports its own).
"""

from __future__ import annotations


from torch import nn

from sparse_adapter.adapters.layouts import bart, bert, gpt2, llama, t5  # noqa: F401 (the built-ins register)
from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout, Slice
from sparse_adapter.errors import ConfigError


class UnknownArchitecture(ConfigError):
    """No layout for this model type: the variant that needed one names itself (``AdapterConfig.attach``)."""



def has_layout(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in LAYOUTS


def layouts_for(model: nn.Module) -> dict[str, Layout]:
    """The layouts of the parts that get adapters (``model.config.adapter_parts``; all by default)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise UnknownArchitecture(
            f"backbone: adapters do not know the '{model_type}' architecture yet "
            f"(supported: {', '.join(sorted(LAYOUTS))}; LoRA and IA³ attach to any model through "
            "module names, e.g. adapter.targets=[q_proj,v_proj])"
        )
    parts = LAYOUTS[model_type]
    parts = parts(config) if callable(parts) else parts
    chosen = getattr(config, "adapter_parts", None) or list(parts)
    unknown = [p for p in chosen if p not in parts]
    if unknown:
        raise ConfigError(f"backbone.adapter_parts={list(chosen)}: '{model_type}' has the parts {', '.join(parts)}")
    return {part: parts[part] for part in chosen}


def layouts_of_type(model_type: str) -> dict[str, Layout]:
    """Every part's layout of ``model_type`` without a model (an adapter file records the type only); {} if none.
    A family whose layouts depend on the config (T5: gated FFN or not) gives its default, whose paths are the same."""
    parts = LAYOUTS.get(model_type, {})
    return parts(None) if callable(parts) else parts


def sliced_names(model_type: str) -> set[str]:
    """Abstract LoRA names that address a slice of a fused projection in ``model_type`` (GPT-2's
    query/key/value thirds of ``c_attn``): PEFT's LoRA, whole modules only, cannot express them."""
    parts = layouts_of_type(model_type)
    return {name for layout in parts.values() for name, target in layout.linears.items() if isinstance(target, Slice)}


def require_slot(model: nn.Module, slot: str, adapter: str) -> None:
    """A clear error when no chosen part of the architecture has ``slot`` (the variant cannot attach)."""
    layouts = layouts_for(model)
    if not any(getattr(layout, slot) for layout in layouts.values()):
        raise ConfigError(
            f"adapter={adapter}: the '{model.config.model_type}' layout has no '{slot}' slot in "
            f"{', '.join(layouts)} yet"
        )


def check_points(model: nn.Module, needs: tuple[str, ...], adapter: str) -> None:
    """A variant's attachment points (``AdapterConfig.needs``), each present in some chosen part of the model."""
    if not needs:
        return
    layouts = layouts_for(model)
    has = {name for layout in layouts.values() for name in layout.available()}
    missing = [name for name in needs if name not in has]
    if missing:
        raise ConfigError(
            f"adapter={adapter} needs the attachment point(s) {', '.join(missing)}, which the"
            f" '{model.config.model_type}' architecture does not have (it has: {', '.join(sorted(has))})"
        )


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module, Layout]]:
    """(qualified name, block, layout) for every block of every chosen part of a task model.

    A decoder block appears once per part that uses it ("decoder" and "cross"), each time with the
    layout of that part, so a variant attaches to its self-attention and cross-attention alike.
    """
    base = model.base_model
    prefix = f"{model.base_model_prefix}." if base is not model else ""  # T5ForConditionalGeneration is its own base
    found = []
    for layout in layouts_for(model).values():
        blocks = base.get_submodule(layout.blocks)
        found += [(f"{prefix}{layout.blocks}.{i}", block, layout) for i, block in enumerate(blocks)]
    return found


def replace_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
