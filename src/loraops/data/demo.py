"""The demo task: support tickets turned into a fixed JSON triage record.

A format/style task of the kind fine-tuning is for: the base model writes English and JSON when asked,
but knows neither this schema nor its labels, while the answer is fully determined by cues in the
ticket (a category cue, an urgency cue, a product name), so a small adapter can learn it.
Generation is seeded and deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from loraops.files import write_text_atomic

INSTRUCTION = "Triage this support ticket as JSON with category, priority and product."

PRODUCTS = ["cloud drive", "mail plus", "photo vault", "smart hub", "pay wallet", "video box"]

CATEGORY_CUES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {p}",
        "my invoice for {p} is wrong",
        "please refund my last payment for {p}",
        "the {p} subscription price went up without notice",
        "my card was billed for {p} after I cancelled",
    ],
    "technical": [
        "{p} crashes when I open it",
        "{p} shows an error and will not load",
        "{p} stopped syncing since the update",
        "{p} is very slow and freezes",
        "the {p} app keeps closing by itself",
    ],
    "account": [
        "I cannot log in to {p}",
        "I forgot my {p} password and the reset mail never came",
        "my {p} account is locked",
        "I want to change the email on my {p} account",
        "someone else signed in to my {p} account",
    ],
    "shipping": [
        "my {p} order has not arrived",
        "the tracking number for {p} does not work",
        "{p} arrived damaged in the box",
        "the {p} package went to the wrong address",
        "delivery of {p} is two weeks late",
    ],
}

PRIORITY_CUES: dict[str, list[str]] = {
    "high": ["This is urgent.", "Please fix it today.", "I need help right now.", "It is blocking my work."],
    "medium": ["Can you help?", "Please take a look.", "What should I do?", "Thanks for checking."],
    "low": ["No rush.", "Whenever you have time.", "Just letting you know.", "It is not important."],
}

OPENERS = ["Hi,", "Hello,", "Hey team,", "Good morning,", ""]


def triage_record(category: str, priority: str, product: str) -> str:
    """The exact answer the adapter must produce (compact JSON, fixed key order)."""
    return json.dumps({"category": category, "priority": priority, "product": product})


def make_ticket(rng: random.Random) -> dict[str, str]:
    category = rng.choice(sorted(CATEGORY_CUES))
    priority = rng.choice(sorted(PRIORITY_CUES))
    product = rng.choice(PRODUCTS)
    body = rng.choice(CATEGORY_CUES[category]).format(p=product)
    urgency = rng.choice(PRIORITY_CUES[priority])
    opener = rng.choice(OPENERS)
    text = f"{opener} {body}. {urgency}".strip()
    return {
        "instruction": f"{INSTRUCTION}\nTicket: {text}",
        "input": "",
        "output": triage_record(category, priority, product),
    }


def generate_tickets(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [make_ticket(rng) for _ in range(n)]


def as_chat(record: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """The same ticket as a chat: the user asks, the assistant answers with the record."""
    return {
        "messages": [
            {"role": "user", "content": record["instruction"]},
            {"role": "assistant", "content": record["output"]},
        ]
    }


# A second task on the same tickets, for a second adapter on the same base model: route the ticket to a
# team with a response-time target. Answers are determined by the category and urgency cues.
ROUTING_INSTRUCTION = "Route this support ticket as JSON with team and sla."
TEAMS = {"account": "identity", "billing": "finance", "shipping": "logistics", "technical": "engineering"}
SLAS = {"high": "4h", "medium": "24h", "low": "72h"}


def routing_schema() -> dict[str, object]:
    """The JSON schema of a routing answer (for ``evaluate.format.json_schema``)."""
    return {
        "type": "object",
        "required": ["team", "sla"],
        "additionalProperties": False,
        "properties": {"team": {"enum": sorted(TEAMS.values())}, "sla": {"enum": list(SLAS.values())}},
    }


def generate_routing(n: int, seed: int = 11) -> list[dict[str, str]]:
    """Tickets like ``generate_tickets``' with the routing answer instead of the triage record."""
    records = []
    for ticket in generate_tickets(n, seed):
        answer = json.loads(ticket["output"])
        text = ticket["instruction"].split("\nTicket: ", 1)[1]
        route = {"team": TEAMS[answer["category"]], "sla": SLAS[answer["priority"]]}
        instruction = f"{ROUTING_INSTRUCTION}\nTicket: {text}"
        records.append({"instruction": instruction, "input": "", "output": json.dumps(route)})
    return records


def write_demo_dataset(
    path: Path,
    n: int = 800,
    seed: int = 7,
    data_format: Literal["alpaca", "chat"] = "alpaca",
    task: Literal["triage", "routing"] = "triage",
) -> Path:
    """Write a demo raw dataset (the triage task, or the routing one) as JSONL (atomic), unless it exists."""
    if path.exists():
        return path
    records = generate_tickets(n, seed) if task == "triage" else generate_routing(n, seed)
    lines = (json.dumps(as_chat(r) if data_format == "chat" else r) + "\n" for r in records)
    write_text_atomic(path, "".join(lines))
    return path
