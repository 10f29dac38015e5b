"""Chat turns → token ids with labels on the assistant turns only, through a chat template.

``task.chat_template``: ``auto`` takes the tokenizer's own template and falls back to ``PLAIN`` (saying so
once) when it has none; ``none`` always takes ``PLAIN``; any other string is a Jinja chat template, or a
``.jinja`` file holding one.

Which tokens are the response: the text of assistant turn *i* is what rendering the first *i+1* turns adds
to rendering the first *i* with the generation prompt (TRL's prompt/completion rule, turn by turn), so
every assistant turn of a multi-turn row is trained, its end-of-turn marker included, and the tokens come
from one tokenisation of the whole conversation (character offsets say which token is whose).

Truncation (``data.max_length`` prompt tokens, ``data.max_target_length`` response tokens): the last user
turn is cut at its end, and the response at its end; the template's markers and the response's start are
never cut. Whatever still exceeds (a long system prompt, many turns) is cut from the left of the prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sparse_adapter.errors import ConfigError

log = logging.getLogger(__name__)
IGNORE = -100

# The documented fallback: "{system}\n\n{user}\n{assistant}<eos>" (turns repeat; BOS first when the tokenizer has one).
PLAIN = (
    "{{ bos_token or '' }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}{{ m['content'] }}\n"
    "{% else %}{{ m['content'] }}{{ eos_token or '' }}{% endif %}{% endfor %}"
)


def end_token_id(tokenizer) -> int | None:
    """Where a response ends: EOS, or [SEP] for a BERT vocabulary (the tiny test models')."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def read_template(path: str) -> str:
    """A Jinja chat template from a file (``task.chat_template=my_template.jinja``), at most 1 MB."""
    from hydra.utils import to_absolute_path

    file = Path(to_absolute_path(path))
    if not file.is_file():
        raise ConfigError(f"task.chat_template: no file '{path}'")
    if file.stat().st_size > 1 << 20:
        raise ConfigError(f"task.chat_template: '{path}' is over 1 MB; a chat template is a few KB")
    return file.read_text(encoding="utf-8")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens before the last response: the generation prompt is input_ids[:prompt_length]


class ChatTemplate:
    """Renders and tokenises conversations with one template."""

    def __init__(self, tokenizer, setting: str = "auto"):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"task: the SFT family needs a fast tokenizer (character offsets); "
                              f"{type(tokenizer).__name__} is not")
        self.tokenizer = tokenizer
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(setting, str) and setting.endswith(".jinja"):
            setting = read_template(setting)
        if setting == "auto":
            self.plain = not own
            if self.plain:
                log.warning("task.chat_template=auto: the tokenizer has no chat template; using the plain template "
                            "'{user}\\n{assistant}<eos>' (tasks/sft/templates.py)")
        elif setting in ("none", None):
            self.plain = True
        elif not isinstance(setting, str) or "{" not in setting:
            raise ConfigError(f"task.chat_template={setting!r}: choose auto, none or a Jinja chat template")
        else:
            self.plain = False
            own = setting
        self.template = PLAIN if self.plain else own
        self.name = "plain" if self.plain else ("tokenizer" if setting == "auto" else "custom")
        end = tokenizer.eos_token or tokenizer.sep_token
        self.extra = {"bos_token": tokenizer.bos_token, "eos_token": end} if self.plain else {}

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt, **self.extra)
        except Exception as error:  # jinja errors: a template that raises on this conversation
            raise ConfigError(f"task.chat_template ({self.name}): cannot render a conversation: {error}") from error

    def spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """(the whole conversation's text, the character span of each assistant turn)."""
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = self.render(messages[:i], generation_prompt=True), self.render(messages[: i + 1])
            if not (full.startswith(before) and full.startswith(through) and through.startswith(before)):
                raise ConfigError(f"task.chat_template ({self.name}): rendering a conversation's first turns does not "
                                  "give a prefix of the whole (the template rewrites earlier turns); responses cannot "
                                  "be located")
            spans.append((len(before), len(through)))
        return full, spans

    def tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]

    def shorten(self, messages: list[dict], index: int, excess: int) -> list[dict] | None:
        """``messages`` with turn ``index``'s content cut by about ``excess`` tokens at its end (one token kept)."""
        message = messages[index]
        begin, end = message.get("cut", (0, len(message["content"])))  # the part that may shrink (formats.formatted)
        content = message["content"]
        _, offsets = self.tokens(content[begin:end])
        keep = max(1, len(offsets) - excess)
        if keep >= len(offsets):
            return None
        stop = begin + offsets[keep - 1][1]
        shorter = dict(message, content=content[:stop] + content[end:])
        if "cut" in message:
            shorter["cut"] = [begin, stop]
        return [shorter if i == index else m for i, m in enumerate(messages)]

    def encode(self, messages: list[dict], max_length: int, max_target_length: int,
               train_on_prompt: bool = False) -> Encoded:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        users = [i for i, m in enumerate(messages[:last]) if m["role"] != "assistant"]
        for _ in range(4):  # cut contents, not markers; a tokenizer may count a cut text one token differently
            full, spans = self.spans(messages)
            ids, offsets = self.tokens(full)
            start = next((t for t, (a, _) in enumerate(offsets) if a >= spans[-1][0]), len(ids))
            prompt_excess, response_excess = start - max_length, len(ids) - start - max_target_length
            shorter = messages
            if response_excess > 0:
                shorter = self.shorten(shorter, last, response_excess) or shorter
            if prompt_excess > 0 and users:
                shorter = self.shorten(shorter, users[-1], prompt_excess) or shorter
            if shorter is messages:
                break
            messages = shorter
        labelled = [train_on_prompt or any(a <= begin < b for a, b in spans) for begin, _ in offsets]
        labels = [token if keep else IGNORE for token, keep in zip(ids, labelled)]
        cut = max(0, start - max_length)  # still too long: the prompt's oldest tokens go
        end = start + max_target_length
        return Encoded(ids[cut:end], labels[cut:end], start - cut)
