"""Token lengths as Axolotl will see them: the base model's tokenizer and the exact prompt template.

alpaca (Axolotl ``type: alpaca``): the prompt ``loraops.prompts.alpaca_prompt(instruction, input)`` is
tokenized with the tokenizer's special tokens (so with BOS when the tokenizer adds one), the response
is tokenized separately, an EOS is appended unless it already ends with one, and a leading BOS of the
response is stripped (``InstructionPromptTokenizingStrategy``). Axolotl then drops every example longer
than ``sequence_len`` tokens.

chat (Axolotl ``type: chat_template`` with the tokenizer's own template): the whole conversation is
rendered with the template, as ``apply_chat_template`` does, and tokenized without special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Encoding, Tokenizer

from loraops.data.records import Example, Format, alpaca_pieces
from loraops.errors import DataError
from loraops.prompts import CHAT_TEMPLATE


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant masks in HF templates): rendered as is."""

    tags = {"generation"}  # noqa: RUF012 - jinja's API

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class TokenCounter:
    """Counts tokens per example for one tokenizer directory (a Hugging Face model directory)."""

    def __init__(self, model_dir: Path) -> None:
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.exists():
            raise DataError(
                f"no tokenizer.json in {model_dir}",
                hint="build the base model (`loraops base-model`) or pass --tokenizer MODEL_DIR",
            )
        self.model_dir = model_dir
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        config_file = model_dir / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_file.read_text("utf-8")) if config_file.exists() else {}
        self.special = {
            name: text
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(name))) is not None
        }
        self.eos_id = self._id(self.special.get("eos_token"))
        self.bos_id = self._id(self.special.get("bos_token"))
        self._bos_text = self.special.get("bos_token") or "\x00no-bos"
        self._eos_text = self.special.get("eos_token") or "\x00no-eos"
        # Whether the post-processor adds nothing but (at most) BOS in front: then a response without
        # special-token text needs its length only. Checked on a probe text.
        probe = "probe text"
        plain, special = (self.tokenizer.encode(probe, add_special_tokens=f).ids for f in (False, True))
        self._adds_bos = special == [self.bos_id, *plain]
        self._plain_response = special == plain or (self._adds_bos and self.bos_id is not None)
        template_file = model_dir / "chat_template.jinja"
        template = config.get("chat_template")
        if template_file.exists():
            template = template_file.read_text("utf-8")
        if isinstance(template, list):  # named templates: take the default
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template_source = "tokenizer" if isinstance(template, str) else "loraops"
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        self._chat = env.from_string(template if isinstance(template, str) else CHAT_TEMPLATE)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def fingerprint_files(self) -> list[Path]:
        """The files whose content determines the counts."""
        names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
        return [self.model_dir / n for n in names if (self.model_dir / n).exists()]

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return self._chat.render(messages=messages, add_generation_prompt=False, **self.special)

    def rendered_text(self, example: Example, fmt: Format) -> str:
        """The whole training text of one example (for reports and benchmarks)."""
        if fmt == "alpaca":
            prompt, response = alpaca_pieces(example)
            return prompt + response + self.special.get("eos_token", "")
        return self.render_chat(example.record["messages"])

    def count(self, examples: Sequence[Example], fmt: Format) -> list[int]:
        if fmt == "chat":
            texts = [self.render_chat(e.record["messages"]) for e in examples]
            encs = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            return [len(e.ids) for e in encs]
        pieces = [alpaca_pieces(e) for e in examples]
        texts = [r for _, r in pieces]
        prompts = self.tokenizer.encode_batch_fast([p for p, _ in pieces], add_special_tokens=True)
        responses = self.tokenizer.encode_batch_fast(texts, add_special_tokens=True)
        return [
            len(p) + self._response_len(r, text) for p, r, text in zip(prompts, responses, texts, strict=True)
        ]

    def _response_len(self, enc: Encoding, text: str) -> int:
        """Axolotl's response length: EOS appended unless there, a leading BOS stripped."""
        n = len(enc)
        if not n:
            return 0
        if self._plain_response and not text.startswith(self._bos_text) and not text.endswith(self._eos_text):
            # No special-token text in the response: its ids are known without building the id list.
            return n + (self.eos_id is not None) - self._adds_bos
        ids = enc.ids
        if self.eos_id is not None and ids[-1] != self.eos_id:
            n += 1
        if self.bos_id is not None and ids[0] == self.bos_id:
            n -= 1
        return n
