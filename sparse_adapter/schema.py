"""Ranges declared on config dataclass fields: one declaration serves the library and the command line.

A field written ``bottleneck: int = ranged(64, ge=1)`` carries its range in the field's metadata; the
type comes from the annotation. The library checks ranges with ``check_ranges`` (in each config's
``validate``); the command line checks types with OmegaConf's structured configs and ranges with the
same ``check_ranges`` (``tasks.validation``), so no range is written twice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sparse_adapter.errors import ConfigError

RANGE = "range"  # the metadata key


@dataclass(frozen=True)
class Range:
    """Bounds of a number (``None``: unbounded); ``each``: the bounds apply to every item of a list."""

    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    each: bool = False
    extra: tuple = ()  # values allowed besides the range (Lightning's -1 for "no limit")
    hint: str = ""  # what the message adds after the bound

    def bound(self) -> str:
        bounds = (self.ge, self.gt, self.lt, self.le)
        ge, gt, lt, le = (x if x is None or isinstance(x, int) else f"{x:g}" for x in bounds)
        low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
        high = f"{lt})" if lt is not None else f"{le}]" if le is not None else None
        if low and high:
            text = f"in {low}, {high}"
        elif ge is not None:
            text = f"≥ {ge}"
        elif gt is not None:
            text = f"> {gt}"
        else:
            text = f"≤ {le}" if le is not None else f"< {lt}"
        extra = f" (or {', '.join(map(str, self.extra))} {self.hint})" if self.extra else f"{self.hint}"
        return text + extra

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is in range (``None`` always is: optional fields); else what it must be."""
        if value is None or value in self.extra and not isinstance(value, bool):
            return None
        if self.each and isinstance(value, (list, tuple)):
            return next((f"item {i}: {p}" for i, item in enumerate(value) if (p := self.problem_of_number(item))), None)
        return self.problem_of_number(value)

    def problem_of_number(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        return None if inside else f"must be {self.bound()}"


def ranged(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds) -> Any:
    """A dataclass field whose value must lie in ``Range(**bounds)``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RANGE: Range(**bounds)})


def ranges(cls: type) -> dict[str, Range]:
    """Field name → its declared range, for a config dataclass (or an instance)."""
    return {f.name: f.metadata[RANGE] for f in dataclasses.fields(cls) if RANGE in f.metadata}


def show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_ranges(values: Any, cls: type | None = None, prefix: str = "") -> None:
    """ConfigError ``prefix.key=value: must be ...`` for the first value outside its declared range.

    ``values`` is a config instance, or a mapping checked against ``cls``'s declarations.
    """
    cls = cls or type(values)
    items = values if isinstance(values, dict) else {f.name: getattr(values, f.name) for f in dataclasses.fields(cls)}
    for name, declared in ranges(cls).items():
        if name in items and (problem := declared.problem(items[name])):
            raise ConfigError(f"{prefix}{'.' if prefix else ''}{name}={show(items[name])}: {problem}")
