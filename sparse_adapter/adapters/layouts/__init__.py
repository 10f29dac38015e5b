"""Where adapters attach inside each Hugging Face architecture: one file per family, one registry."""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout, Slice, Target, target_path
from sparse_adapter.adapters.layouts.registry import (
    check_points, has_layout, layouts_for, layouts_of_type, replace_submodule, require_slot, sliced_names,
    transformer_blocks,
)

__all__ = [
    "LAYOUTS", "Layout", "Slice", "Target", "check_points", "has_layout", "layouts_for",
    "layouts_of_type", "replace_submodule", "require_slot", "sliced_names", "target_path", "transformer_blocks",
]
