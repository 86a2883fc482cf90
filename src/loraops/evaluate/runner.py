"""Asks the served models for answers through the OpenAI-compatible endpoint (the side effect)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from openai import APIError, OpenAI

from loraops.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One answer and what it cost in tokens (from the server's usage report)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CompletionClient:
    """Greedy completions from a vLLM server, by served model name (base, adapter or stable name)."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, concurrency: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = OpenAI(
            base_url=f"{self.base_url}/v1", api_key="loraops", timeout=timeout_s, max_retries=2
        )
        self.concurrency = concurrency

    def complete(self, model: str, prompt: str | list[dict[str, str]], max_tokens: int) -> Completion:
        """Greedy answer to a prompt (completions endpoint) or a conversation (chat endpoint)."""
        try:
            if isinstance(prompt, str):
                resp = self.client.completions.create(
                    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
                )
                usage = resp.usage
                return Completion(
                    resp.choices[0].text,
                    usage.prompt_tokens if usage else 0,
                    usage.completion_tokens if usage else 0,
                )
            chat = self.client.chat.completions.create(
                model=model,
                messages=prompt,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0.0,
            )
        except APIError as exc:
            raise StageError(
                f"the server at {self.base_url} refused a request for {model!r}: {exc}"
            ) from None
        usage = chat.usage
        return Completion(
            chat.choices[0].message.content or "",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    def complete_many(
        self,
        model: str,
        prompts: Sequence[str | list[dict[str, str]]],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """``complete`` for each prompt, ``concurrency`` requests in flight, results in prompt order."""
        results: list[Completion] = [Completion("")] * len(prompts)
        done = 0
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.complete, model, p, max_tokens): i for i, p in enumerate(prompts)}
            for future in futures:
                results[futures[future]] = future.result()
                done += 1
                if on_progress is not None and (done % 25 == 0 or done == len(prompts)):
                    on_progress(done, len(prompts))
        return results
