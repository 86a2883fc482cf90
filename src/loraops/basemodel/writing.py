"""Everyday English and JSON for the base model to read and write (pure Python, seeded).

A real base model has read and written a lot of text before anyone fine-tunes it: the words of a
support ticket and the characters of a JSON object are familiar to it. With the skills corpus alone,
no such token is ever a training target: its (tied) embedding row is only pushed down as a wrong answer,
and an adapter on the attention/MLP layers cannot make it a confident, distinct output. Measured on
the 1.1M-parameter default model (plain torch/peft, 800 demo tickets): LoRA stalled at a loss of ~4.3
and 0% right while a full fine-tune reached 93%; with these writing examples in the pre-training the
same LoRA gets ~98% of the records entirely right in 3 epochs. Words a copied field needs (the two-word
names) had to be written ~150 times each: at ~35 the product field stayed near chance for 3 epochs.
They are generic sentences, JSON records and "facts of a sentence as JSON" built from word lists; no
ticket triage, which stays the fine-tune's job.
"""

from __future__ import annotations

import json
import random

WRITING_SKILL = "writing"

_INSTRUCTIONS = (
    "Write a sentence.",
    "Write a short message.",
    "Write a note to a friend.",
    "Write a line of text.",
)
_JSON_INSTRUCTIONS = ("Write a JSON record.", "Write a small JSON object.")

_SUBJECTS = (
    "I", "We", "My friend", "The customer", "Our team", "She", "He", "They", "My sister", "The driver",
)  # fmt: skip
_PAST_VERBS = (
    "opened", "paid", "ordered", "bought", "sent", "lost", "found", "checked", "changed", "updated",
    "cancelled", "reset", "received", "returned", "fixed", "moved", "cleaned", "painted", "carried",
    "washed", "built", "signed", "tracked", "charged", "visited", "forgot", "shared", "packed", "saved",
)  # fmt: skip
_NOUNS = (
    "apple", "garden", "window", "house", "table", "chair", "kitchen", "office", "market", "library",
    "station", "bridge", "car", "truck", "train", "boat", "bicycle", "book", "story", "song", "piano",
    "camera", "phone", "screen", "computer", "keyboard", "printer", "battery", "lamp", "clock",
    "bottle", "ticket", "wallet", "coin", "invoice", "payment", "refund", "card", "bill", "price",
    "subscription", "plan", "account", "password", "email", "mail", "message", "address", "order",
    "package", "box", "delivery", "item", "product", "app", "website", "page", "login", "update",
    "version", "device", "system", "file", "photo", "video", "drive", "cloud", "vault", "hub",
    "number", "report", "letter", "bread", "coffee", "river", "forest", "village", "road", "street",
)  # fmt: skip
_ADJECTIVES = (
    "red", "green", "blue", "old", "new", "small", "large", "heavy", "quick", "slow", "bright",
    "dark", "quiet", "loud", "clean", "broken", "wrong", "right", "fresh", "warm", "cold", "smart",
    "simple", "strong", "empty", "full", "late", "early", "damaged", "locked", "free", "important",
)  # fmt: skip
_TIMES = (
    "today", "yesterday", "last week", "this morning", "two weeks ago", "after the update",
    "on Monday", "before lunch", "since Friday", "last night", "every day", "again",
)  # fmt: skip
_PRESENT_VERBS = (
    "works", "stops", "crashes", "freezes", "loads", "opens", "closes", "moves", "shines", "breaks",
    "arrives", "syncs", "starts", "waits", "changes", "sings", "runs", "helps",
)  # fmt: skip
_REQUESTS = (
    "Can you help me with", "Please look at", "Could you check", "I need help with",
    "Thanks for fixing", "Please send", "Where is", "I love",
)  # fmt: skip
_CLOSERS = (
    "Thanks.", "Thank you.", "No rush.", "This is urgent.", "See you soon.", "It is not important.",
    "Please reply today.", "Have a nice day.", "I am happy.", "What should I do?",
)  # fmt: skip
# Labels of the kind records are sorted by (a topic, a level, a state).
_LABELS = (
    "billing", "technical", "shipping", "account", "security", "sales", "general", "legal", "other",
    "high", "medium", "low", "normal", "urgent", "open", "closed", "pending", "done", "yes", "no",
    "plus", "pro", "mini", "max", "pay", "home", "go",
)  # fmt: skip
_JSON_KEYS = (
    "name", "color", "size", "city", "status", "type", "level", "owner", "topic", "item", "note",
    "category", "priority", "product", "kind", "state", "label",
)  # fmt: skip
_JSON_VALUES = (*_ADJECTIVES, *_NOUNS, *_LABELS, *_LABELS)


def _sentence(rng: random.Random) -> str:
    noun, other = rng.choice(_NOUNS), rng.choice(_NOUNS)
    adjective = rng.choice(_ADJECTIVES)
    form = rng.randrange(5)
    if form == 0:
        subject, verb, when = rng.choice(_SUBJECTS), rng.choice(_PAST_VERBS), rng.choice(_TIMES)
        return f"{subject} {verb} the {adjective} {noun} {when}."
    if form == 1:
        return f"The {noun} {rng.choice(_PRESENT_VERBS)} when I open the {other}."
    if form == 2:
        return f"{rng.choice(_REQUESTS)} my {adjective} {noun}?"
    if form == 3:
        return f"My {noun} is {adjective} and the {other} is {rng.choice(_ADJECTIVES)}."
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_PAST_VERBS)} my {noun} and the {other}."


def _json_record(rng: random.Random) -> str:
    keys = rng.sample(_JSON_KEYS, rng.randint(2, 4))
    values = [
        rng.choice(_JSON_VALUES)
        if rng.random() < 0.6
        else _noun_phrase(rng)
        if rng.random() < 0.5
        else _owned_name(rng)
        for _ in keys
    ]
    return json.dumps(dict(zip(keys, values, strict=True)))


def _noun_phrase(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(_NOUNS)
    if roll < 0.8:
        return " ".join(rng.sample(_NOUNS, 2))
    return f"{rng.choice((*_ADJECTIVES, *_LABELS, *_NOUNS))} {rng.choice((*_NOUNS, *_LABELS))}"


# Two-word names of things people own and ask about ("smart phone", "photo album"): the kind of name a
# record copies out of a message. Small lists, so that each word is written often.
_NAME_FIRST = (
    "smart", "pay", "mail", "photo", "video", "cloud", "home", "game", "music", "travel", "work",
    "kids", "sound", "gift", "news", "fit",
)  # fmt: skip
_NAME_SECOND = (
    "hub", "wallet", "plus", "vault", "drive", "box", "card", "app", "phone", "watch", "pass", "book",
    "album", "club", "pro", "lite",
)  # fmt: skip


def _owned_name(rng: random.Random) -> str:
    return f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)}"


def _owned_thing_facts(rng: random.Random) -> tuple[str, str]:
    """A message about something the writer owns, and its facts: which thing, in what state."""
    name, when = _owned_name(rng), rng.choice(_TIMES)
    form = rng.randrange(3)
    if form == 0:
        state = rng.choice(_PRESENT_VERBS)
        text = f"My {name} {state} {when}. {rng.choice(_CLOSERS)}"
        facts = {"item": name, "status": state}
    elif form == 1:
        verb = rng.choice(_PAST_VERBS)
        text = f"{rng.choice(_SUBJECTS)} {verb} a {name} {when}."
        facts = {"item": name, "action": verb, "when": when}
    else:
        adjective = rng.choice(_ADJECTIVES)
        text = f"{rng.choice(_REQUESTS)} my {name}? It is {adjective}."
        facts = {"status": adjective, "item": name}
    return f"Write the facts of this text as JSON.\nText: {text}", json.dumps(facts)


def _facts(rng: random.Random) -> tuple[str, str]:
    """A sentence and the JSON of what it says: reading words out of a text into a record."""
    item, adjective, when = _noun_phrase(rng), rng.choice(_ADJECTIVES), rng.choice(_TIMES)
    closer = rng.choice(_CLOSERS)
    form = rng.randrange(4)
    if form == 0:
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_PAST_VERBS)} the {adjective} {item} {when}."
        facts = {"item": item, "color": adjective, "when": when}
    elif form == 1:
        state = rng.choice(_PRESENT_VERBS)
        text = f"The {item} {state} {when}. {closer}"
        facts = {"item": item, "status": state, "when": when}
    elif form == 2:
        text = f"{rng.choice(_REQUESTS)} the {item}? It is {adjective}."
        facts = {"item": item, "status": adjective}
    else:
        label, level = rng.choice(_LABELS[:9]), rng.choice(("high", "medium", "low"))
        text = f"The {item} is about {label} and it has {level} {rng.choice(('value', 'priority', 'cost'))}."
        facts = {"topic": label, "level": level, "item": item}
    return f"Write the facts of this text as JSON.\nText: {text}", json.dumps(facts)


def writing_example(rng: random.Random) -> tuple[str, str]:
    """One ``(instruction, output)`` pair: a message of one to three sentences, a JSON record, or the
    facts of a sentence as JSON."""
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(_JSON_INSTRUCTIONS), _json_record(rng)
    if kind < 0.45:
        return _owned_thing_facts(rng)
    if kind < 0.7:
        return _facts(rng)
    sentences = [_sentence(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.5:
        sentences.append(rng.choice(_CLOSERS))
    return rng.choice(_INSTRUCTIONS), " ".join(sentences)
