"""OmegaConf resolvers that derive settings in the config itself, so ``--cfg job --resolve`` and the
logged config show what runs.

Large-Sparse (paper Table 3) multiplies an adapter's width by k and prunes 1 - 1/k of it:
``bottleneck: ${large_sparse.width:64,${large_sparse}}`` and
``sparsity: ${large_sparse.sparsity:${large_sparse},0.4}``. An explicit ``adapter.bottleneck=...``
replaces the interpolation and is the width that runs.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def scaled_width(width: int, k: int | None) -> int:
    """The dense width ×k, or the width itself without Large-Sparse (k checked by the run)."""
    return width * k if isinstance(k, int) and k >= 1 else width


def large_sparse_sparsity(k: int | None, default: float) -> float:
    """1 - 1/k: the same number of kept weights as the dense adapter at width ×k."""
    return 1.0 - 1.0 / k if isinstance(k, int) and k >= 1 else default


def register() -> None:
    for name, function in {"large_sparse.width": scaled_width, "large_sparse.sparsity": large_sparse_sparsity}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register()
