"""Asks the served models for answers through the OpenAI-compatible endpoint (the side effect).

Requests go out from one asyncio loop over one pooled ``httpx.AsyncClient`` (kept-alive connections,
``concurrency`` in flight), the way vLLM's own load generator (``vllm bench serve``) drives a server:
threads around the ``openai`` client spent enough CPU per request to slow a CPU-bound server down
(bench/bench_eval_throughput.py measures the two against each other).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from loraops.errors import StageError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRIES = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Completion:
    """One answer and what it cost in tokens (from the server's usage report)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # request sent to answer received, on the server as it was loaded then


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when the caller's thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="loraops-completions")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class CompletionClient:
    """Greedy completions from a vLLM server, by served model name (base, adapter or stable name)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        api_key: str | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        """``sampling``: request fields over the greedy defaults (``{"temperature": 0.8, "seed": 1}``)."""
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.sampling = dict(sampling or {})

    def complete(self, model: str, prompt: str | list[dict[str, str]], max_tokens: int) -> Completion:
        """Greedy answer to a prompt (completions endpoint) or a conversation (chat endpoint)."""
        return self.complete_many(model, [prompt], max_tokens)[0]

    def complete_many(
        self,
        model: str,
        prompts: Sequence[str | list[dict[str, str]]],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """``complete`` for each prompt, ``concurrency`` requests in flight, results in prompt order."""
        return _run(self._many(model, prompts, max_tokens, on_progress))

    async def _many(
        self,
        model: str,
        prompts: Sequence[str | list[dict[str, str]]],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> list[Completion]:
        gate = asyncio.Semaphore(self.concurrency)
        done = 0
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, limits=limits, headers=self.headers
        ) as http:

            async def one(prompt: str | list[dict[str, str]]) -> Completion:
                nonlocal done
                async with gate:
                    result = await self._ask(http, model, prompt, max_tokens)
                done += 1
                if on_progress is not None and (done % 25 == 0 or done == len(prompts)):
                    on_progress(done, len(prompts))
                return result

            return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _ask(
        self, http: httpx.AsyncClient, model: str, prompt: str | list[dict[str, str]], max_tokens: int
    ) -> Completion:
        chat = not isinstance(prompt, str)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, **self.sampling}
        body["messages" if chat else "prompt"] = prompt
        for attempt in range(RETRIES + 1):
            sent = time.perf_counter()
            try:
                resp = await http.post(path, json=body)
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise StageError(
                        f"the server at {self.base_url} did not answer a request for {model!r} "
                        f"({type(exc).__name__}: {exc})",
                        hint="is the stack up? `loraops up` starts it",
                    ) from None
            else:
                if resp.status_code == 200:
                    return _completion(resp.json(), chat, time.perf_counter() - sent)
                if resp.status_code not in RETRY_STATUSES or attempt == RETRIES:
                    raise StageError(
                        f"the server at {self.base_url} refused a request for {model!r} "
                        f"({resp.status_code}): {_error_text(resp)}"
                    )
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def _completion(doc: dict[str, Any], chat: bool, latency_s: float = 0.0) -> Completion:
    choice = doc["choices"][0]
    text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    usage = doc.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return Completion(text or "", prompt, completion, round(latency_s, 4))


def _error_text(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or "(empty answer)"
    err = doc.get("error", doc) if isinstance(doc, dict) else doc
    return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
