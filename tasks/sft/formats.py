"""Instruction-data rows → chat ``messages`` (role/content), whatever form the file has.

Three forms, as TRL, LLaMA-Factory and axolotl read them:

- ``alpaca``: ``instruction``, optional ``input``, ``output`` (user = instruction, then a blank line and
  the input when there is one; assistant = output), optional ``system``;
- ``messages``: a list of ``{"role", "content"}`` turns (``conversations`` with ``from``/``value`` as
  ShareGPT writes them is read too);
- ``prompt_completion``: ``prompt`` and ``completion`` (strings, or lists of turns as TRL's
  conversational form).

``task.columns`` maps these names onto a file's own (``{prompt: question, completion: answer}``);
``task.prompt`` is a format string over a row's fields (mapped ones included) that builds the user
turn, e.g. ``"Summarize: {prompt}\\nSummary:"``.
"""

from __future__ import annotations

from sparse_adapter.errors import ConfigError

FORMATS = ("alpaca", "messages", "prompt_completion")
FIELDS = {"alpaca": ("instruction", "output"), "messages": ("messages",), "prompt_completion": ("prompt", "completion")}
EXPECTED = "alpaca (instruction, output[, input]), messages (messages), prompt_completion (prompt, completion)"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadRow(ValueError):
    """A row this format cannot read; the message is the reason it is counted under."""


def mapped(row: dict, columns: dict) -> dict:
    """The row with ``columns`` (our name → the file's name) applied; the file's own names stay too."""
    out = dict(row)
    for ours, theirs in columns.items():
        if theirs in row:
            out[ours] = row[theirs]
    return out


def detect_format(row: dict, columns: dict, prompt: str | None, source: str) -> str:
    """The format whose fields the (mapped) first row has; none: one error naming what was found."""
    if not isinstance(row, dict):
        raise ConfigError(f"task.path: rows of {source} are {type(row).__name__}, not objects with fields; "
                          f"expected {EXPECTED}")
    fields = mapped(row, columns)
    if "conversations" in fields and "messages" not in fields:
        return "messages"
    for name in FORMATS:
        needed = FIELDS[name] if not (prompt and name == "prompt_completion") else ("completion",)
        if all(field in fields for field in needed):
            return name
    found = ", ".join(sorted(map(str, row))) or "none"
    raise ConfigError(f"task.format=auto: rows of {source} have the fields [{found}], none of the known formats: "
                      f"{EXPECTED}; "
                      "map yours with task.columns, e.g. task.columns={prompt: question, completion: answer}")


def text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} not a string")
    if not value.strip():
        raise BadRow(f"empty {what}")
    return value


def turns(value, what: str) -> list[dict]:
    """A list of {role, content} turns (ShareGPT's {from, value} accepted)."""
    if isinstance(value, str):
        return [{"role": "user" if what == "prompt" else "assistant", "content": text(value, what)}]
    if not isinstance(value, list) or not value:
        raise BadRow(f"{what} not a list of turns")
    out = []
    for turn in value:
        if not isinstance(turn, dict):
            raise BadRow(f"{what} turn not an object")
        role = turn.get("role", SHAREGPT_ROLES.get(turn.get("from")))
        content = turn.get("content", turn.get("value"))
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise BadRow(f"{what} turn without role/content")
        if role == "assistant" and not content.strip():
            raise BadRow("empty response")
        out.append({"role": role, "content": content})
    return out


def formatted(prompt: str, fields: dict) -> dict:
    """The user turn ``prompt.format(**fields)``; ``cut`` marks the longest field's characters in it, the part that
    truncation shortens (the document, never the instruction around it)."""
    try:
        content = text(prompt.format(**fields), "prompt")
        longest = max((k for k, v in fields.items() if isinstance(v, str) and "{" + str(k) + "}" in prompt),
                      key=lambda k: len(fields[k]), default=None)
        if longest is None or prompt.count("{" + str(longest) + "}") != 1:
            return {"role": "user", "content": content}
        begin = prompt.format(**{**fields, longest: "\0"}).index("\0")
    except (KeyError, IndexError) as error:
        raise ConfigError(f"task.prompt: '{prompt}' names the field {error}, which rows lack (fields: "
                          f"{', '.join(sorted(map(str, fields)))})") from error
    return {"role": "user", "content": content, "cut": [begin, begin + len(fields[longest])]}


def to_messages(row: dict, form: str, columns: dict, prompt: str | None, system: str | None) -> list[dict]:
    """The row as chat turns; raises BadRow (a counted skip) for a row that has no usable response."""
    if not isinstance(row, dict):
        raise BadRow("malformed")
    fields = mapped(row, columns)
    if form == "alpaca":
        user = text(fields.get("instruction"), "instruction")
        extra = fields.get("input")
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra}"
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": text(fields.get("output"), "response")}]
        system = fields.get("system") if isinstance(fields.get("system"), str) and fields.get("system") else system
    elif form == "messages":
        messages = turns(fields.get("messages", fields.get("conversations")), "messages")
    elif form == "prompt_completion":
        if prompt is not None:
            user = [formatted(prompt, fields)]
        else:
            user = turns(fields.get("prompt"), "prompt")
        answer = fields.get("completion")
        messages = user + (turns(answer, "response") if isinstance(answer, list) else
                           [{"role": "assistant", "content": text(answer, "response")}])
    else:
        raise ConfigError(f"task.format={form}: unknown (choose from auto, {', '.join(FORMATS)})")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


def source_text(row: dict, columns: dict) -> str | None:
    """The row's prompt field (mapped), for baselines that read the source (LEAD-1)."""
    value = mapped(row, columns).get("prompt") if isinstance(row, dict) else None
    return value if isinstance(value, str) else None
