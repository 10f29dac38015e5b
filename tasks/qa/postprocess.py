"""From start/end logits of one feature back to character spans of its context (HF run_qa's n-best).

A feature's offsets hold (char start, char end) for context tokens and ``None`` elsewhere
(question, special and padding tokens), so only spans inside the context can win. An example
split into several features (long context, doc stride) takes the best span over all of them,
which the caller does by keeping the highest score per example.
"""

from __future__ import annotations

import numpy as np


def best_spans(start_logits, end_logits, offsets: list, n_best: int = 20, max_answer_length: int = 30) -> list[tuple[float, int, int]]:
    """Valid (score, char start, char end) candidates, best first; score = start + end logit."""
    start_logits, end_logits = np.asarray(start_logits, dtype=float), np.asarray(end_logits, dtype=float)
    length = min(len(offsets), len(start_logits))
    starts = np.argsort(start_logits[:length])[::-1][:n_best]
    ends = np.argsort(end_logits[:length])[::-1][:n_best]
    spans = []
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), int(offsets[s][0]), int(offsets[e][1])))
    spans.sort(key=lambda span: -span[0])
    return spans
