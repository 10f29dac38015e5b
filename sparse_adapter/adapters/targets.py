"""Which projections LoRA and IA³ wrap: the layout's abstract names (``query``, ``value``, ...) or
module-name suffixes as PEFT's ``target_modules`` (``q_proj``, ``c_attn``, ``q``), on any model.

A target resolves to (qualified module path, output channels or None): GPT-2's fused ``c_attn``
gives ``query`` and ``value`` one slice each; several targets on one module merge into one wrapper.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from sparse_adapter.adapters.layouts import Slice, has_layout, layouts_for, target_path, transformer_blocks
from sparse_adapter.errors import ConfigError



def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2, weight stored in×out), without importing
    transformers: an instance exists only once its module is loaded, so a missing module means no."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def is_projection(module: nn.Module) -> bool:
    """What a module-name target may wrap: ``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def __getattr__(name: str):
    if name == "PROJECTIONS":  # the (Linear, Conv1D) pair, built on demand so importing this module skips transformers
        from transformers.pytorch_utils import Conv1D

        return (nn.Linear, Conv1D)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if is_conv1d(module) else module.in_features


def out_features(module: nn.Module) -> int:
    """Output width of a projection, or of the last projection inside a sublayer (BERT's ``intermediate``)."""
    if is_conv1d(module):
        return module.nf
    if isinstance(module, nn.Linear):
        return module.out_features
    inner = [m for m in module.modules() if is_projection(m)]
    if not inner:
        raise ConfigError(f"adapter: cannot tell the output width of {type(module).__name__}")
    return out_features(inner[-1])


@dataclass
class Site:
    """One module to wrap: its qualified path and the output channels the adapter touches (None: all)."""

    path: str
    module: nn.Module
    channels: list[int] | None = None


def body_projections(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> Linear/Conv1D of the backbone body (the task head is not a target)."""
    body = {id(m) for m in model.base_model.modules()}
    return {name: m for name, m in model.named_modules() if is_projection(m) and id(m) in body}


def resolve(model: nn.Module, targets: list[str], tables: tuple[str, ...], setting: str = "adapter.targets") -> dict[str, list[Site]]:
    """Target name -> the sites it names. ``tables`` are the layout slots of abstract names (``linears``
    for LoRA; ``scaled``/``scaled_input`` for IA³); any other name is a module-name suffix."""
    if not all(isinstance(target, str) for target in targets):
        raise ConfigError(f"{setting}={list(targets)}: expected names (strings) of projections, e.g. [query,value]")
    abstract = {}
    if has_layout(model):
        abstract = {name: table for layout in layouts_for(model).values() for table in tables for name in getattr(layout, table)}
    projections = None
    found: dict[str, list[Site]] = {}
    for target in targets:
        if target in abstract:
            found[target] = _layout_sites(model, target, abstract[target])
            continue
        projections = body_projections(model) if projections is None else projections
        found[target] = [Site(name, m) for name, m in projections.items() if name == target or name.endswith("." + target)]
        if not found[target]:
            examples = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in projections))[:8]
            named = f"the layout's names {', '.join(abstract)} or " if abstract else ""
            raise ConfigError(
                f"{setting}={list(targets)}: '{target}' names no Linear of this "
                f"'{getattr(model.config, 'model_type', '?')}' model; use {named}module names such as {', '.join(examples)}"
            )
    return found


def _layout_sites(model: nn.Module, target: str, table: str) -> list[Site]:
    sites = []
    for block_name, block, layout in transformer_blocks(model):
        spec = getattr(layout, table).get(target)
        if spec is None:  # e.g. fc1 in BART's cross-attention part
            continue
        module = block.get_submodule(target_path(spec))
        channels = None
        if isinstance(spec, Slice):
            width = out_features(module) // spec.parts
            channels = list(range(spec.index * width, (spec.index + 1) * width))
        sites.append(Site(f"{block_name}.{target_path(spec)}", module, channels))
    return sites


def merged(model: nn.Module, sites: list[Site]) -> list[Site]:
    """One site per module, in the model's module order: channels of several targets on it joined
    (None, all channels, wins)."""
    by_path: dict[str, Site] = {}
    for site in sites:
        if site.path not in by_path:
            by_path[site.path] = Site(site.path, site.module, None if site.channels is None else list(site.channels))
            continue
        seen = by_path[site.path]
        if seen.channels is None or site.channels is None:
            seen.channels = None
        else:
            seen.channels = sorted(set(seen.channels) | set(site.channels))
    for site in by_path.values():
        if site.channels is not None and site.channels == list(range(out_features(site.module))):
            site.channels = None
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(by_path.values(), key=lambda site: order[site.path])
