"""Generation metrics of the SFT family: GSM8K exact match as lm-evaluation-harness scores it, and ROUGE.

lm-eval's ``gsm8k`` task (v3): the reference is the whole answer; "strict-match" takes the first number
after ``#### `` in the output, "flexible-extract" the last number-like run (``-?[$0-9.,]{2,}`` or a lone
digit); no match gives ``[invalid]``. Exact match then deletes ``,``, ``$``, everything up to ``#### ``
and a final ``.`` from both sides, lower-cases them and compares. Written here from that definition and
held to lm-eval's own filter and metric in tests/test_sft.py.
"""

from __future__ import annotations

import re
from collections import Counter

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"


def strict_answer(text: str) -> str:
    found = STRICT.findall(text)
    return found[0].strip() if found else INVALID


def flexible_answer(text: str) -> str:
    found = FLEXIBLE.findall(text)
    if not found:
        return INVALID
    groups = [g for g in found[-1] if g]
    return groups[0].strip() if groups else INVALID


def normalise(text: str) -> str:
    for pattern in IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_scores(outputs: list[str], references: list[str]) -> dict[str, float]:
    """exact_match_strict / exact_match_flexible: fractions of outputs whose extracted number equals the reference's."""
    if not outputs:
        return {"exact_match_strict": 0.0, "exact_match_flexible": 0.0}
    gold = [normalise(r) for r in references]
    strict = sum(normalise(strict_answer(o)) == g for o, g in zip(outputs, gold))
    flexible = sum(normalise(flexible_answer(o)) == g for o, g in zip(outputs, gold))
    return {"exact_match_strict": strict / len(outputs), "exact_match_flexible": flexible / len(outputs)}


def most_frequent_answer(references: list[str]) -> str:
    """The trivial predictor's output: the training set's most frequent final answer (ties: the smallest string)."""
    counts = Counter(normalise(r) for r in references)
    best = max(counts.values())
    return "#### " + min(answer for answer, n in counts.items() if n == best)
