"""Counted, logged skips of individual bad rows: never a silent drop, never a crash mid-run."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


class SkippedRows:
    """Counts skipped rows per (split, reason) and logs one line per split with the counts."""

    def __init__(self):
        self.counts: Counter = Counter()

    def skip(self, split: str, reason: str) -> None:
        self.counts[(split, reason)] += 1

    def report(self, task: str, split: str, kept: int) -> None:
        reasons = {r: n for (s, r), n in self.counts.items() if s == split}
        if reasons:
            log.warning("%s %s: skipped %d rows (%s); %d kept", task, split, sum(reasons.values()),
                        ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())), kept)

    def as_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (split, reason), n in sorted(self.counts.items()):
            out.setdefault(split, {})[reason] = n
        return out
