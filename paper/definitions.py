"""The paper's rows, published numbers, tables, tasks and claims, read from ``paper/data/*.yaml`` as plain data.

``yaml.safe_load`` builds dicts, lists, strings and numbers only; each file's shape is checked here, so a
mistyped key is one clear error naming the file rather than a KeyError deep inside a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

import yaml

DATA = Path(__file__).with_name("data")


class DefinitionError(ValueError):
    """A data file under ``paper/data`` does not have the shape the report reads."""


def read(name: str):
    path = DATA / name
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise DefinitionError(f"{path}: {error}") from error


def records(name: str, items, kind: type) -> list:
    """Each mapping of ``items`` as a ``kind`` (a dataclass); unknown or missing keys name the file and entry."""
    allowed = {f.name for f in fields(kind)}
    out = []
    for index, item in enumerate(items or []):
        if not isinstance(item, dict) or set(item) - allowed:
            unknown = sorted(set(item) - allowed) if isinstance(item, dict) else item
            raise DefinitionError(f"{DATA / name}: entry {index + 1}: unknown keys {unknown} "
                                  f"(allowed: {sorted(allowed)})")
        try:
            out.append(kind(**item))
        except TypeError as error:
            raise DefinitionError(f"{DATA / name}: entry {index + 1}: {error}") from error
    return out


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim, in one line
    row: str
    reference: str
    kind: str = "beats"  # or "matches": the row is no worse than the reference
    measure: str = "final"  # or "early": mean dev metric over the first EARLY of training (needs quarter-epoch evals)
    paper: str | None = None  # the paper's GLUE averages holding both rows: "BERT" (Tables 1, 3), "RoBERTa" (Table 2)

    def __post_init__(self):
        if self.kind not in ("beats", "matches") or self.measure not in ("final", "early"):
            raise TypeError(f"{self.text!r}: kind must be beats|matches and measure final|early")


@dataclass(frozen=True)
class Task:
    key: str  # the run's ``task``
    name: str  # its column: the task and its main metric
    family: str  # verdicts pool within a family; Avg. averages the glue family
    also: dict[str, str] = field(default_factory=dict)  # metric -> short name, shown beside the main one


@dataclass(frozen=True)
class Table:
    title: str
    rows: list[str]  # in the paper's order
    signature: list[str]  # rows whose presence makes the table appear
    reference: dict | None = None  # {name, values: a published.yaml key}: a column shown for orientation

    def reference_column(self) -> tuple[str, dict[str, float]]:
        if not self.reference:
            return "", {}
        return self.reference["name"], published()[self.reference["values"]]


@cache
def published() -> dict[str, dict]:
    return read("published.yaml")


@cache
def row_labels() -> dict[str, str]:
    return read("rows.yaml")


@cache
def tables() -> list[Table]:
    return records("tables.yaml", read("tables.yaml"), Table)


@cache
def _tasks() -> dict:
    return read("tasks.yaml")


@cache
def tasks() -> list[Task]:
    return records("tasks.yaml", _tasks()["tasks"], Task)


def families() -> dict[str, str]:
    """family key -> its name in the tables, in report order."""
    return dict(_tasks()["families"])


def table2_columns() -> list[tuple[str, set[str]]]:
    """The paper's Table 2 layout: (column title, the tasks of its family)."""
    columns = _tasks()["table2_columns"]
    return [(column["title"], {t.key for t in tasks() if t.family == column["family"]}) for column in columns]


def table2_published(family: str) -> tuple[dict[str, float], str] | None:
    """(row -> the paper's Table 2 number in ``family``'s column, where it comes from: 'BERT, SQuAD F1'); None
    when Table 2 has no column for the family."""
    columns = _tasks()["table2_columns"]
    position = next((i for i, column in enumerate(columns) if column["family"] == family), None)
    if position is None:
        return None
    values = {row: float(str(cells).split("/")[position]) for row, cells in published()["table2"].items()}
    return values, f"{columns[position]['paper']}, {columns[position]['title']}"


@cache
def _claims() -> dict:
    return read("claims.yaml")


def claims() -> list[Claim]:
    return records("claims.yaml", _claims()["claims"], Claim)


def checks() -> list[Claim]:
    return records("claims.yaml", _claims()["checks"], Claim)


def claim_setting(name: str) -> float:
    """``margin`` or ``early`` from claims.yaml."""
    return float(_claims()[name])
