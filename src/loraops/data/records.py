"""One JSONL line at a time: decode, parse, check against the format, and put into canonical form.

Pure logic, no I/O. Every check returns :class:`Issue` values (line number, code, reason) instead of
raising, so that a file is reported in full, not up to its first problem.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import unicodedata
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Literal

from loraops.prompts import alpaca_prompt

Format = Literal["alpaca", "chat"]
Severity = Literal["error", "warning"]

ALPACA_FIELDS = ("instruction", "input", "output")
CHAT_ROLES = ("system", "user", "assistant")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# C0 controls other than tab, newline and carriage return, and DEL: never meant in training text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SUSPECT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffd]")


@dataclass(frozen=True)
class Issue:
    """A problem found in the data. ``line`` is 1-based; 0 means the file as a whole."""

    file: str
    line: int
    code: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message} [{self.code}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }


class _DuplicateKey(ValueError):
    pass


class _BadConstant(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(dup)
    return obj


def _constant(name: str) -> Any:
    raise _BadConstant(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)


@dataclass
class Parsed:
    """The outcome of decoding and parsing one line: ``value`` is set when it is a JSON value."""

    value: Any = None
    ok: bool = False
    blank: bool = False
    code: str = ""
    message: str = ""


def parse_line(raw: bytes, *, first: bool) -> Parsed:
    """Decode one line (without any check of its content). ``first``: it is line 1 of the file."""
    text_bytes = raw[:-1] if raw.endswith(b"\n") else raw
    if text_bytes.endswith(b"\r"):
        text_bytes = text_bytes[:-1]
    if first and text_bytes.startswith(UTF8_BOM):
        text_bytes = text_bytes[len(UTF8_BOM) :]
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = text_bytes[exc.start : exc.start + 4].hex(" ")
        return Parsed(
            code="invalid_utf8",
            message=f"invalid UTF-8 at byte {exc.start + 1} (bytes {bad}): save the file as UTF-8",
        )
    if not text.strip():
        return Parsed(blank=True)
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as exc:
        return Parsed(code="duplicate_key", message=f"key '{exc}' appears twice in one object")
    except _BadConstant as exc:
        return Parsed(code="invalid_json", message=f"invalid JSON: {exc} is not a JSON value")
    except json.JSONDecodeError as exc:
        return Parsed(code="invalid_json", message=f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return Parsed(code="invalid_json", message="invalid JSON: nested too deeply")
    return Parsed(value=value, ok=True)


@dataclass
class Example:
    """A valid record: canonical form (what is written to the splits) and the texts the checks use."""

    record: dict[str, Any]
    input_text: str  # what the model is given (instruction + input, or the conversation so far)
    output_text: str  # what it must answer (output, or the last assistant turn)


# ---------------------------------------------------------------- checks per format


def _text_problems(value: str, where: str) -> list[tuple[str, str, Severity]]:
    problems: list[tuple[str, str, Severity]] = []
    if _SUSPECT.search(value) is None:  # one scan for the common case: nothing to report
        return problems
    bad = _CONTROL.search(value)
    if bad:
        problems.append(
            ("control_character", f"{where} contains control character U+{ord(bad.group()):04X}", "error")
        )
    if _SURROGATE.search(value):
        problems.append(("invalid_unicode", f"{where} contains an unpaired UTF-16 surrogate", "error"))
    if "\ufffd" in value:
        problems.append(
            (
                "replacement_character",
                f"{where} contains U+FFFD (a character lost by an earlier decoding)",
                "warning",
            )
        )
    return problems


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _suggest(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


Problems = list[tuple[str, str, Severity]]


def check_alpaca(obj: Any) -> tuple[Example | None, Problems]:
    problems: Problems = []
    if not isinstance(obj, dict):
        return None, [("not_an_object", f"expected a JSON object, got {_type_name(obj)}", "error")]
    if "messages" in obj and "instruction" not in obj:
        return None, [
            ("mixed_format", "record has 'messages' (chat format) in a dataset of alpaca records", "error")
        ]
    texts: dict[str, str] = {}
    for name in ALPACA_FIELDS:
        value = obj.get(name)
        if name == "input" and value is None:
            texts[name] = ""
            continue
        if name not in obj:
            problems.append(("missing_field", f"required field '{name}' is missing", "error"))
        elif not isinstance(value, str):
            problems.append(
                ("wrong_type", f"field '{name}' must be a string, got {_type_name(value)}", "error")
            )
        elif name != "input" and not value.strip():
            problems.append(("empty_field", f"field '{name}' is empty", "error"))
        else:
            texts[name] = value
            problems.extend(_text_problems(value, f"field '{name}'"))
    for name in obj:
        if name not in ALPACA_FIELDS:
            problems.append(
                ("unknown_field", f"unknown field '{name}'{_suggest(name, ALPACA_FIELDS)}", "warning")
            )
    if any(sev == "error" for _, _, sev in problems):
        return None, problems
    record = {"instruction": texts["instruction"], "input": texts["input"], "output": texts["output"]}
    for name in sorted(obj):
        if name not in record:
            record[name] = obj[name]
    input_text = texts["instruction"] + ("\n" + texts["input"] if texts["input"] else "")
    return Example(record, input_text, texts["output"]), problems


def check_chat(obj: Any) -> tuple[Example | None, Problems]:
    if not isinstance(obj, dict):
        return None, [("not_an_object", f"expected a JSON object, got {_type_name(obj)}", "error")]
    if "messages" not in obj:
        if "conversations" in obj:
            return None, [
                (
                    "missing_field",
                    "'conversations' (ShareGPT) is not supported: use 'messages' with role/content",
                    "error",
                )
            ]
        if "instruction" in obj:
            return None, [
                ("mixed_format", "record has 'instruction' (alpaca format) in a dataset of chats", "error")
            ]
        return None, [("missing_field", "required field 'messages' is missing", "error")]
    messages = obj["messages"]
    if not isinstance(messages, list):
        return None, [("wrong_type", f"'messages' must be an array, got {_type_name(messages)}", "error")]
    if not messages:
        return None, [("empty_field", "'messages' is empty", "error")]
    problems: Problems = []
    roles: list[str] = []
    for i, msg in enumerate(messages, start=1):
        where = f"message {i}"
        if not isinstance(msg, dict):
            problems.append(("wrong_type", f"{where} must be an object, got {_type_name(msg)}", "error"))
            roles.append("?")
            continue
        role = msg.get("role")
        if "role" not in msg:
            problems.append(("missing_field", f"{where} has no 'role'", "error"))
        elif not isinstance(role, str):
            problems.append(
                ("wrong_type", f"{where}: 'role' must be a string, got {_type_name(role)}", "error")
            )
        elif role not in CHAT_ROLES:
            problems.append(
                (
                    "unknown_role",
                    f"{where} has unknown role '{role}' (expected system, user or assistant)"
                    f"{_suggest(role, CHAT_ROLES)}",
                    "error",
                )
            )
        roles.append(role if isinstance(role, str) else "?")
        content = msg.get("content")
        if "content" not in msg:
            problems.append(("missing_field", f"{where} has no 'content'", "error"))
        elif not isinstance(content, str):
            problems.append(
                ("wrong_type", f"{where}: 'content' must be a string, got {_type_name(content)}", "error")
            )
        elif not content.strip():
            problems.append(("empty_field", f"{where} ({role}) has empty content", "error"))
        else:
            problems.extend(_text_problems(content, where))
    if "system" in roles[1:]:
        at = roles.index("system", 1) + 1
        problems.append(
            ("misplaced_system", f"system message at position {at}: only the first may be", "error")
        )
    if "user" not in roles:
        problems.append(("no_user_turn", "conversation has no user message", "error"))
    if roles[-1] != "assistant":
        problems.append(
            (
                "last_turn_not_assistant",
                f"conversation ends with a '{roles[-1]}' turn, not 'assistant'",
                "error",
            )
        )
    turns = [r for r in roles if r in ("user", "assistant")]
    if any(a == b for a, b in itertools.pairwise(turns)):
        problems.append(("roles_not_alternating", "user and assistant turns do not alternate", "warning"))
    for name in obj:
        if name != "messages":
            problems.append(
                ("unknown_field", f"unknown field '{name}'{_suggest(name, ('messages',))}", "warning")
            )
    if any(sev == "error" for _, _, sev in problems):
        return None, problems
    context = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    record = {"messages": messages, **{k: obj[k] for k in sorted(obj) if k != "messages"}}
    return Example(record, context, messages[-1]["content"]), problems


def check(obj: Any, fmt: Format) -> tuple[Example | None, Problems]:
    return check_alpaca(obj) if fmt == "alpaca" else check_chat(obj)


def vote_format(obj: Any) -> Format | None:
    """The format a parsed record looks like, if any (used by format detection)."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "chat"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    return None


# ---------------------------------------------------------------- normalisation and keys

_NON_WORD = re.compile(r"[\W_]+")


# ASCII fast path of _NON_WORD: every ASCII character but letters and digits becomes a space.
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})


def normalise(text: str) -> str:
    """Text as compared for near-duplicates: NFKC, case-folded, punctuation and spacing collapsed."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_NON_WORD).split())
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Hasher:
    """A stable salted 64-bit hash of text (the same on every machine and Python version)."""

    def __init__(self, salt: str = "") -> None:
        self._base = blake2b(salt.encode("utf-8") + b"\x00", digest_size=8)

    def __call__(self, text: str) -> int:
        h = self._base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "big")


def key64(text: str, salt: str = "") -> int:
    return Hasher(salt)(text)


_ENCODER = json.JSONEncoder(ensure_ascii=False)


def canonical_line(record: dict[str, Any]) -> str:
    return _ENCODER.encode(record)


# ---------------------------------------------------------------- output shapes and labels

_WORDS = re.compile(r"[^\W\d_]+")
_DIGITS = re.compile(r"\d+")


def _json_object(text: str) -> Any:
    if text[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def output_shape(output: str) -> str:
    """A coarse signature of an answer: JSON keys for JSON objects, else its layout with words as 'w'."""
    stripped = output.strip()
    value = _json_object(stripped)
    if isinstance(value, dict):
        return "json{" + ",".join(str(k) for k in value) + "}"
    if isinstance(value, list):
        return "json[]"
    shape = _DIGITS.sub("9", _WORDS.sub("w", stripped[:200]))
    shape = re.sub(r"w( w)+", "w…", shape)
    return shape[:60]


def output_labels(output: str) -> dict[str, str]:
    """Candidate categorical fields of an answer: short values of a JSON object, or the short answer."""
    fields: dict[str, str] = {}
    out = output.strip()
    value = _json_object(out)
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str | bool | int) and len(str(v)) <= 40:
                fields[f"output.{k}"] = str(v)
    if len(out) <= 40:
        fields["output"] = out
    return fields


class OutputFacts:
    """output_shape and output_labels, memoised: answers repeat a lot in the datasets that matter here
    (classification, fixed formats), and each costs a JSON parse."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._memo: dict[str, tuple[str, dict[str, str]]] = {}

    def __call__(self, output: str) -> tuple[str, dict[str, str]]:
        facts = self._memo.get(output)
        if facts is None:
            facts = (output_shape(output), output_labels(output))
            if len(self._memo) >= self.capacity:
                self._memo.clear()
            if len(output) <= 1000:
                self._memo[output] = facts
        return facts


def label_fields(example: Example, fmt: Format, from_output: dict[str, str] | None = None) -> dict[str, str]:
    """Candidate categorical fields of an example: those of its answer (see output_labels) and short
    string values of extra fields."""
    fields = dict(output_labels(example.output_text) if from_output is None else from_output)
    skip = ALPACA_FIELDS if fmt == "alpaca" else ("messages",)
    for k, v in example.record.items():
        if k not in skip and isinstance(v, str | bool | int) and len(str(v)) <= 40:
            fields[k] = str(v)
    return fields


# ---------------------------------------------------------------- what the tokenizer sees


def alpaca_pieces(example: Example) -> tuple[str, str]:
    """(prompt, response): the two texts Axolotl's alpaca strategy tokenizes, in that order."""
    rec = example.record
    return alpaca_prompt(rec["instruction"], rec["input"]), rec["output"]
