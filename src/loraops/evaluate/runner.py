"""Asks the served models for answers through the OpenAI-compatible endpoint (the side effect)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from openai import APIError, OpenAI

from loraops.errors import StageError

log = logging.getLogger(__name__)


class CompletionClient:
    """Greedy completions from a vLLM server, by served model name (base, adapter or stable name)."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, concurrency: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = OpenAI(
            base_url=f"{self.base_url}/v1", api_key="loraops", timeout=timeout_s, max_retries=2
        )
        self.concurrency = concurrency

    def complete(self, model: str, prompt: str | list[dict[str, str]], max_tokens: int) -> str:
        """Greedy answer to a prompt (completions endpoint) or a conversation (chat endpoint)."""
        try:
            if isinstance(prompt, str):
                resp = self.client.completions.create(
                    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
                )
                return resp.choices[0].text
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
        return chat.choices[0].message.content or ""

    def complete_many(
        self,
        model: str,
        prompts: Sequence[str | list[dict[str, str]]],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        results: list[str] = [""] * len(prompts)
        done = 0
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.complete, model, p, max_tokens): i for i, p in enumerate(prompts)}
            for future in futures:
                results[futures[future]] = future.result()
                done += 1
                if on_progress is not None and (done % 25 == 0 or done == len(prompts)):
                    on_progress(done, len(prompts))
        return results
