"""Notices of unattended runs, delivered to a **stand-in for a chat webhook**: a local HTTP receiver that
answers the statuses a test asks for and keeps what it was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loraops.notify import Notice, NotifyParams, notify, send

pytestmark = pytest.mark.stand_in


class Receiver:
    """An HTTP server on loopback that answers ``status`` (one per request, the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses[min(len(receiver.bodies), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver_of() -> Iterator[Callable[[list[int]], Receiver]]:
    """Makes receivers; shuts them down after the test."""
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make
    for r in made:
        r.server.shutdown()


NOTICE = Notice(
    "refused", "support-triage", "candidate - base +0.01 < 0.2", version="7", flow_run_url="http://p/r"
)


def test_a_refusal_reaches_the_receiver_with_a_readable_line(receiver_of) -> None:
    receiver = receiver_of([200])
    assert notify(NotifyParams(webhook_url=receiver.url), NOTICE) is None
    (body,) = receiver.bodies
    assert body["event"] == "refused" and body["model"] == "support-triage" and body["version"] == "7"
    assert body["text"] == "loraops support-triage v7: refused: candidate - base +0.01 < 0.2 http://p/r"
    assert body["at"].endswith("+00:00")


def test_events_not_asked_for_are_not_sent(receiver_of) -> None:
    receiver = receiver_of([200])
    params = NotifyParams(webhook_url=receiver.url, events=["failed"])
    assert notify(params, NOTICE) is None
    assert receiver.bodies == []


def test_a_server_error_is_retried_and_a_refusal_is_not(receiver_of) -> None:
    flaky = receiver_of([503, 200])
    assert send(flaky.url, NOTICE, attempts=3) is None
    assert len(flaky.bodies) == 2
    refusing = receiver_of([404])
    problem = send(refusing.url, NOTICE, attempts=3)
    assert problem is not None and "after 1 attempt(s): HTTP 404" in problem
    assert len(refusing.bodies) == 1


def test_an_unreachable_receiver_is_reported_not_raised() -> None:
    problem = send("http://127.0.0.1:9/nothing", NOTICE, attempts=1, timeout_s=2)
    assert problem is not None and problem.startswith("notice to http://127.0.0.1:9/nothing not delivered")
