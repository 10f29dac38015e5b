"""Check a GLUE TSV before ``datasets`` parses it: every failure names the file and the line.

``datasets`` reports empty, binary, truncated or mislabelled files as long tracebacks (or not at
all: CoLA label 2 crashes inside the loss, hours later). One pass with the csv module, quoting off
as GLUE needs, finds them first.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from sparse_adapter.errors import ConfigError

NUL, NEWLINE = b"\x00", b"\n"


def _label_problem(task, label: str) -> str | None:
    """None if ``label`` is one the task knows; else why not."""
    if task.is_regression:
        try:
            return None if math.isfinite(float(label)) else "is not a finite number"
        except ValueError:
            return "is not a number"
    if task.label_names:
        return None if label in task.label_names else f"is not one of {', '.join(task.label_names)}"
    try:
        value = int(label)
    except ValueError:
        return f"is not an integer in 0..{task.num_labels - 1}"
    return None if 0 <= value < task.num_labels else f"is outside 0..{task.num_labels - 1}"


def check_tsv(path: Path, task) -> int:
    """Raise ConfigError for an empty, binary, header-only, wrongly shaped or mislabelled file; return its row count."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ConfigError(f"data: {path} is empty")
    if NUL in raw:
        line = raw[: raw.index(NUL)].count(NEWLINE) + 1
        raise ConfigError(f"data: {path} line {line} holds binary data (a NUL byte), not TSV text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(NEWLINE) + 1
        raise ConfigError(f"data: {path} line {line} is not UTF-8 text ({error.reason})") from error
    rows = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    if task.columns:
        columns, first_line = list(task.columns), 1
    else:
        columns, first_line = next(rows), 2
        missing = [c for c in [*task.text_fields, task.label_field] if c not in columns]
        if missing:
            raise ConfigError(f"data: {path} line 1: header lacks column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    label_at = columns.index(task.label_field)
    count = 0
    for line, row in enumerate(rows, start=first_line):
        if not row:
            continue
        if len(row) != len(columns):
            raise ConfigError(f"data: {path} line {line}: {len(row)} fields, expected {len(columns)} ({', '.join(columns)}); truncated or malformed row")
        problem = _label_problem(task, row[label_at])
        if problem:
            raise ConfigError(f"data: {path} line {line}: label {row[label_at]!r} {problem}")
        count += 1
    if count == 0:
        raise ConfigError(f"data: {path} has {'a header but ' if not task.columns else ''}no rows")
    return count
