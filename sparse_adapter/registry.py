"""One mechanism for every extension point: a named registry that extensions add themselves to.

Adapter variants (``sparse_adapter.adapters.ADAPTERS``), scorers (``pruning.SCORERS``), allocations
(``pruning.ALLOCATIONS``), architectures (``adapters.layouts.LAYOUTS``) and task heads
(``backbones.TASK_HEADS``) are each a ``Registry``. An extension registers where it is defined::

    @SCORERS.register("my_scorer", needs_batches=True)
    def my_scores(params, loss_fn, batches, **_): ...

so a new one is one file (plus its YAML for the command line), imported by the user: the CLI's
``plugins=[my_package.my_module]`` setting imports such modules before the config is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sparse_adapter.errors import ConfigError


class Registry(dict):
    """Name → extension. ``register`` is a decorator (or a plain call with the value); ``lookup``
    turns an unknown name into one ConfigError naming the setting and the choices."""

    def __init__(self, kind: str, setting: str, on_register: Callable[[Any, dict], Any] | None = None):
        super().__init__()
        self.kind, self.setting, self.on_register = kind, setting, on_register

    def register(self, names: str | Iterable[str], value: Any = None, **info):
        """Add ``value`` under ``names`` (one name or several aliases); ``info`` goes to ``on_register``
        (a scorer's ``needs_batches``, say). Without ``value``: a decorator."""
        def add(value: Any) -> Any:
            value = self.on_register(value, info) if self.on_register else value
            for name in [names] if isinstance(names, str) else names:
                self[name] = value
            return value

        return add if value is None else add(value)

    def lookup(self, name: str) -> Any:
        if name not in self:
            raise ConfigError(f"{self.setting}='{name}' is unknown (choose from {', '.join(self)})")
        return self[name]

    def name_of(self, value: Any) -> str:
        """The (first) name ``value`` is registered under."""
        for name, registered in self.items():
            if registered is value:
                return name
        raise ConfigError(f"{self.kind} {getattr(value, '__name__', value)} is not registered (see docs/extending.md)")


def load_plugins(modules: Iterable[str], setting: str = "plugins") -> None:
    """Import the user's extension modules (they register themselves on import).

    Only the user's own command line or config names them: a run folder's saved settings never do
    (``tasks.replay`` refuses ``plugins`` there), because importing a module runs its code.
    """
    import importlib

    for module in modules or ():
        if not isinstance(module, str) or not module:
            raise ConfigError(f"{setting}: expected module names (strings), got {module!r}")
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"{setting}: cannot import '{module}' ({error}); put its folder on PYTHONPATH") from None
