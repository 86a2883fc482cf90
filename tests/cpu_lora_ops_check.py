"""Runs in the server environment (torch): loraops' CPU LoRA ops against the upstream formula, masked.

Reads a JSON list of cases on stdin and prints one JSON object: case id -> what was checked
(tests/test_cpu_lora_ops.py builds the cases and asserts on the answers). Each case draws random
tensors, runs loraops' fast op and its masked fallback on copies of one output tensor, and compares them
with the reference below: vLLM 0.32's torch op (``vllm/lora/ops/torch_ops/lora_ops.py``, gather + einsum
in the output dtype) with the rows whose index is negative contributing nothing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from loraops.serving import cpu_lora_ops as ops

HIDDEN = 48
OUT = 40
TOLERANCE = {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 2e-2)}  # (rtol, atol) on values of size ~1


def indices_for(pattern: str, tokens: int, slots: int, gen: torch.Generator) -> torch.Tensor:
    if pattern == "all_none":
        values = [-1] * tokens
    elif pattern == "all_same":
        values = [1] * tokens
    elif pattern == "last_slot_and_none":  # the slot that index -1 selects upstream
        values = [slots - 1 if i % 3 else -1 for i in range(tokens)]
    elif pattern == "runs":  # a few consecutive runs: sgmv takes row slices
        third = tokens // 3
        values = [0] * third + [-1] * third + [2] * (tokens - 2 * third)
    elif pattern == "interleaved":  # many short runs: sgmv groups rows per slot
        values = [(i % (slots + 1)) - 1 for i in range(tokens)]
    elif pattern == "mixed":
        values = torch.randint(-1, slots, (tokens,), generator=gen).tolist()
        values[:3] = [-1, 0, 1]
    else:
        raise ValueError(pattern)
    return torch.tensor(values, dtype=torch.long)


def reference_outputs(
    x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    selected = w[idx].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", x.to(dtype=dtype), selected)
    return outputs * (idx >= 0).to(dtype).unsqueeze(1)


def reference(
    case: dict[str, Any], x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
) -> None:
    outputs = reference_outputs(x, w, idx, y.dtype)
    if case["op"] == "shrink":
        y[:, : outputs.shape[1]] = case["scaling"] * outputs[:]
    elif case["op"] == "expand":
        limit = y.shape[0]
        if outputs.shape[0] == 1 and y.shape[0] != 1:
            limit = 1
        common = min(outputs.shape[1], y.shape[1])
        if case["add"]:
            y[:, :common] += outputs[:limit, :common]
        else:
            y[:, :common] = outputs[:limit, :common]
    else:
        start, size = case["offset"], outputs.shape[1]
        if case["add"]:
            y[:, start : start + size] += outputs[:]
        else:
            y[:, start : start + size] = outputs[:]


def segments(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """vLLM's compute_meta: runs of one index -> (starts, lengths, indices, batches, max_len, tokens)."""
    slots, lengths = torch.unique_consecutive(idx, return_counts=True)
    starts = torch.zeros_like(lengths)
    starts[1:] = torch.cumsum(lengths, 0)[:-1]
    # as vLLM passes them: the first `batches` entries of larger buffers
    pad = torch.full((4,), 99, dtype=torch.long)
    return (
        torch.cat([starts, pad])[: len(slots)],
        torch.cat([lengths, pad])[: len(slots)],
        torch.cat([slots, pad])[: len(slots)],
        len(slots),
        int(lengths.max()),
        int(lengths.sum()),
    )


def call(fns: dict[str, Any], case: dict[str, Any], x: Any, w: Any, y: Any, idx: Any) -> None:
    op, kind = case["op"], case["kind"]
    name = f"{kind}_{op}"
    if kind == "sgmv":
        meta = segments(idx)
        if op == "shrink":
            fns[name](x, w, y, *meta, case["scaling"])
        elif op == "expand":
            fns[name](x, w, y, *meta, case["add"])
        else:
            fns[name](x, w, y, *meta, case["offset"], w.shape[-2], case["add"])
    elif op == "shrink":
        fns[name](x, w, y, idx, case["scaling"])
    elif op == "expand":
        fns[name](x, w, y, idx, case["add"])
    else:
        fns[name](x, w, y, idx, case["offset"], w.shape[-2], case["add"])


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case["dtype"])
    slots, rank, tokens = case["slots"], case["rank"], case["tokens"]
    in_rows = {"same": tokens, "one": 1, "more": tokens + 3}[case["rows"]]
    idx = indices_for(case["pattern"], in_rows, slots, gen)
    if case["op"] == "shrink":  # vLLM: model-dtype activations and A, a float32 buffer
        x = torch.randn(in_rows, HIDDEN, generator=gen).to(dtype)
        w = (torch.randn(slots, rank, HIDDEN, generator=gen) / HIDDEN**0.5).to(dtype)
        y0 = torch.randn(tokens, rank + case["pad"], generator=gen)
    else:  # a float32 buffer in, model-dtype B and output
        x = torch.randn(in_rows, rank, generator=gen)
        w = (torch.randn(slots, OUT, rank, generator=gen) / rank**0.5).to(dtype)
        width = OUT + case["pad"] if case["op"] == "expand" else case["offset"] + OUT + 5
        y0 = torch.randn(tokens, width, generator=gen).to(dtype)
    if case["dims"] == 4:
        w = w.unsqueeze(1)
    expected, fast, masked = y0.clone(), y0.clone(), y0.clone()
    reference(case, x, w, expected, idx)
    call(ops.FAST_OPS, case, x, w, fast, idx)
    call({**ops.MASKED_OPS, **_masked_sgmv()}, case, x, w, masked, idx)

    rtol, atol = TOLERANCE[case["dtype"]]
    diff = (fast.double() - expected.double()).abs().max().item()
    close = torch.allclose(fast.double(), expected.double(), rtol=rtol, atol=atol)

    # what the op must leave alone or zero exactly: rows without adapter, columns outside its region
    written = torch.zeros_like(y0, dtype=torch.bool)
    if case["op"] == "expand_slice":
        written[:, case["offset"] : case["offset"] + OUT] = True
    else:
        written[:, : min(w.shape[-2], y0.shape[1])] = True
    exact = True
    if in_rows >= tokens:  # row r of the output belongs to row r of the input
        none = (idx[:tokens] < 0).unsqueeze(1) & written
        base = y0 if case["op"] != "shrink" and case["add"] else torch.zeros_like(y0)
        exact = bool(torch.equal(fast[none], base[none]))
    outside = bool(torch.equal(fast[~written], y0[~written]))
    plan = ops.segment_plan(*segments(idx)[:4]) if case["kind"] == "sgmv" else ops.token_plan(idx)
    return {
        "path": plan.path,
        "close": bool(close),
        "max_abs_diff": diff,
        "base_rows_exact": exact and outside,
        "masked_equals_reference": bool(torch.equal(masked, expected)),
        "indices": idx.tolist(),
    }


def _masked_sgmv() -> dict[str, Any]:
    """Upstream's sgmv_* (expand to per-token indices) over the masked bgmv ops."""

    def explode(meta: tuple[Any, ...]) -> torch.Tensor:
        return torch.repeat_interleave(meta[2], meta[1])

    return {
        "sgmv_shrink": lambda x, w, y, *a: ops.masked_bgmv_shrink(x, w, y, explode(a), a[-1]),
        "sgmv_expand": lambda x, w, y, *a: ops.masked_bgmv_expand(x, w, y, explode(a), a[-1]),
        "sgmv_expand_slice": lambda x, w, y, *a: ops.masked_bgmv_expand_slice(
            x, w, y, explode(a), a[-3], a[-2], a[-1]
        ),
    }


def main() -> None:
    torch.set_num_threads(1)
    cases = json.load(sys.stdin)
    print(json.dumps({case["id"]: run_case(case) for case in cases}))


if __name__ == "__main__":
    main()
