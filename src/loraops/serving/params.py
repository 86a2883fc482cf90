"""params.yaml `serving:` section: how the vLLM server runs and how adapters are swapped on it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# vLLM refuses any other --max-lora-rank at start-up.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# Flags that vllm_service_spec sets from the fields below; extra_args must not set them a second time.
MANAGED_FLAGS = {
    "--model": "base_model.source",
    "--served-model-name": "base_model.served_name",
    "--host": "serving.host",
    "--port": "serving.port",
    "--enable-lora": "(always on)",
    "--max-lora-rank": "serving.max_lora_rank",
    "--max-loras": "serving.max_loras",
    "--max-model-len": "serving.max_model_len",
    "--dtype": "serving.dtype",
    "--enable-prefix-caching": "serving.enable_prefix_caching",
    "--no-enable-prefix-caching": "serving.enable_prefix_caching",
    "--gpu-memory-utilization": "serving.gpu_memory_utilization",
}


class ServingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Interface the OpenAI-compatible server binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the OpenAI-compatible server.")
    replicas: int = Field(
        default=1,
        ge=1,
        le=16,
        description="vLLM servers serving the same adapters. With more than one, replica i listens on "
        "port + 1 + i and vLLM's own router (vllm-router) listens on port and spreads requests over them.",
    )
    router_policy: Literal["round_robin", "power_of_two", "cache_aware", "random"] = Field(
        default="round_robin", description="How vllm-router picks a replica (replicas > 1)."
    )
    max_lora_rank: int = Field(
        default=16,
        description="Largest LoRA rank the server accepts (vLLM allows 1, 8, 16, 32, 64, 128, 256, 320, "
        "512). Must be >= train.lora_r; larger values cost memory.",
    )
    max_loras: int = Field(
        default=2,
        ge=1,
        description="Adapters that can run in one batch (the stable name plus room for a swap).",
    )
    max_model_len: int = Field(
        default=512,
        ge=16,
        description="Context length (prompt + answer) per request; at most the base model's "
        "max_position_embeddings (512 for the built tiny model), or the server refuses to start.",
    )
    dtype: str = Field(
        default="float32",
        description="Weights/activations dtype. float32 is safe on CPU; on a GPU use auto or bfloat16.",
    )
    kv_cache_gib: int = Field(
        default=1, ge=1, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE, GiB)."
    )
    enable_prefix_caching: bool = Field(
        default=False,
        description="Reuse KV blocks of shared prompt prefixes. vLLM keys cached blocks by adapter name and "
        "path, so files changed under a path that is loaded again serve stale output (vllm#42125); loraops "
        "loads every version from its own directory. Off by default.",
    )
    swap: Literal["inplace", "reload"] = Field(
        default="inplace",
        description="How a new version replaces the adapter under the stable name. inplace: one load call; "
        "loraops' vLLM plugin loads the new directory under a fresh adapter id and then moves the name to "
        "it, so the name is never unknown (corrects vllm#33791). reload: unload, then load again (the name "
        "is unknown for a few ms; for a vLLM without the plugin).",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the API key that applications send (Authorization: Bearer <key>). "
        "Default: .loraops/vllm-api.key, made by the stack on first start (mode 600).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cpu when the server environment holds vllm-cpu, cuda otherwise."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (cuda only)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More vLLM server flags, appended as given (escape hatch)."
    )
    start_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long to wait for /health at start-up (vLLM on 2 CPU cores takes 1-2 minutes).",
    )

    def replica_ports(self) -> list[int]:
        """The port of each vLLM replica: ``port`` itself for one, ``port + 1 + i`` behind the router."""
        if self.replicas == 1:
            return [self.port]
        return [self.port + 1 + i for i in range(self.replicas)]

    @field_validator("max_lora_rank")
    @classmethod
    def _allowed_rank(cls, value: int) -> int:
        if value not in ALLOWED_MAX_LORA_RANKS:
            allowed = ", ".join(str(r) for r in ALLOWED_MAX_LORA_RANKS)
            above = [r for r in ALLOWED_MAX_LORA_RANKS if r >= value]
            suggestion = f"; use {above[0]}" if above else ""
            raise ValueError(f"vLLM accepts max_lora_rank {allowed} only{suggestion}")
        return value

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: list[str]) -> list[str]:
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise ValueError(f"{flag} is set by loraops; set {MANAGED_FLAGS[flag]} instead of extra_args")
        return args
