"""The retrieval baseline: the base model with the top-k training examples (BM25) in its prompt.

Fine-tuning has to beat what a team would otherwise ship: retrieval-augmented prompting with the same
training data. For each test example the k training examples whose questions score highest under
BM25 (bm25s, a maintained implementation) are put before the question as worked examples; the same
test examples, the same base model. Its prompts are longer, which the cost comparison counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loraops.prompts import alpaca_prompt

RAG_PREAMBLE = "Answer in the same way as these solved examples."


def _question(record: dict[str, Any]) -> str:
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"][:-1] if m["role"] == "user")
    return f"{record['instruction']}\n{record.get('input') or ''}".strip()


def _answer(record: dict[str, Any]) -> str:
    return str(record["messages"][-1]["content"] if "messages" in record else record["output"])


class Retriever:
    """BM25 over the questions of the training examples."""

    def __init__(self, train_records: Sequence[dict[str, Any]]) -> None:
        import bm25s

        if not train_records:
            raise ValueError("the retrieval baseline needs training examples")
        self.records = list(train_records)
        self._bm25 = bm25s.BM25()
        self._bm25.index(
            bm25s.tokenize([_question(r) for r in self.records], show_progress=False), show_progress=False
        )

    def top_k(self, queries: Sequence[dict[str, Any]], k: int) -> list[list[dict[str, Any]]]:
        """The k best training examples for each query record, best first."""
        import bm25s

        k = min(k, len(self.records))
        if k == 0 or not queries:
            return [[] for _ in queries]
        tokens = bm25s.tokenize([_question(q) for q in queries], show_progress=False)
        found, _ = self._bm25.retrieve(tokens, k=k, show_progress=False)
        return [[self.records[int(i)] for i in row] for row in found]


def rag_request(record: dict[str, Any], neighbours: Sequence[dict[str, Any]]) -> str | list[dict[str, str]]:
    """The test example's request with its retrieved examples: few-shot chat turns for chat data, an
    instruction with the examples in front for alpaca data."""
    if "messages" in record:
        shots: list[dict[str, str]] = []
        for shot in neighbours:
            shots += [m for m in shot["messages"] if m["role"] in ("user", "assistant")]
        turns = [{"role": m["role"], "content": m["content"]} for m in record["messages"][:-1]]
        system = [t for t in turns if t["role"] == "system"]
        return system + shots + [t for t in turns if t["role"] != "system"]
    examples = "\n\n".join(f"Example:\n{_question(n)}\nAnswer: {_answer(n)}" for n in neighbours)
    instruction = f"{RAG_PREAMBLE}\n\n{examples}\n\nNow:\n{record['instruction']}"
    return alpaca_prompt(instruction, record.get("input") or "")
