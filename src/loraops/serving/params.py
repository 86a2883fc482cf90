"""params.yaml `serving:` section: how the vLLM server runs and how adapters are swapped on it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# vLLM refuses any other --max-lora-rank at start-up.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# What the stack keeps loaded per registered model besides its warm versions: the stable name and the
# version name of champion and challenger (each name is its own adapter in vLLM), a version name retiring
# after a move, and a version being evaluated.
ADAPTERS_PER_MODEL = 6

# Flags that vllm_service_spec sets from the fields below; extra_args must not set them a second time.
MANAGED_FLAGS = {
    "--model": "base_model.source",
    "--served-model-name": "base_model.served_name",
    "--host": "serving.host",
    "--port": "serving.port",
    "--enable-lora": "(always on)",
    "--max-lora-rank": "serving.max_lora_rank",
    "--max-loras": "serving.max_loras",
    "--max-cpu-loras": "serving.max_cpu_loras",
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
    max_models: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Registered models this server hosts side by side, each with its stable name, version "
        "names and challenger (every model registered on this base model is served, up to this many). "
        "Sizes max_loras and max_cpu_loras.",
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        description="Adapters that can run in one batch. Unset: 2 x max_models (every model's stable name, "
        "plus room for a swap in flight). Fewer than max_models makes requests to some models queue.",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="Adapters vLLM keeps loaded in host memory. Unset: "
        f"({ADAPTERS_PER_MODEL} + warm_versions) x max_models (champion and challenger under their stable "
        "and version names, a retiring version, one being evaluated, the warm versions). Fewer makes vLLM "
        "evict adapters and re-read them from disk.",
    )
    warm_versions: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Versions per model that may be served (gate passed, or a person's override) and that "
        "no alias points at, kept loaded under <model>-v<N> with their canary checked, least recently used "
        "out. The hook warms a version when its decision is recorded, so moving an alias to it (a "
        "promotion, a rollback in the MLflow UI) only switches the stable name. 0: load at the move.",
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
    cpu_threads_bind: str = Field(
        default="auto",
        pattern=r"^(all|auto|nobind|[0-9][0-9,\-|]*)$",
        description="Cores of vllm-cpu's compute threads (VLLM_CPU_OMP_THREADS_BIND). auto: vLLM's own (one "
        "core per rank kept for its scheduler and the API server, NUMA aware). all: every core this process "
        "may use, none reserved, shared out among the replicas of this host: on 2 cores 1.3-1.4x the "
        "tokens/s of auto for plain requests (2026-12-07, SmolLM2), but 2.3x slower streamed answers when "
        "another process kept a core busy (threads bound to a shared core wait on each other), so only for "
        "a host vLLM has to itself. Or vLLM's core list, e.g. 0-15. Ignored on GPUs.",
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
    admin_token_file: Path | None = Field(
        default=None,
        description="File holding the token of the server's load/unload endpoints and of the sync hook. "
        "Default: .loraops/vllm-admin.token, made on first start (mode 600). A workspace that uses another "
        "workspace's stack (stack.sync_url) points this and api_key_file at that workspace's files.",
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

    def lora_slots(self) -> tuple[int, int]:
        """``(--max-loras, --max-cpu-loras)``: what is set, else sized from ``max_models``."""
        max_loras = self.max_loras or 2 * self.max_models
        return max_loras, self.max_cpu_loras or max(self.adapters_per_model() * self.max_models, max_loras)

    def adapters_per_model(self) -> int:
        """Adapters the stack keeps loaded per registered model, its warm versions included."""
        return ADAPTERS_PER_MODEL + self.warm_versions

    @model_validator(mode="after")
    def _adapters_fit(self) -> ServingParams:
        max_loras, max_cpu_loras = self.lora_slots()
        if max_loras < self.max_models:
            raise ValueError(
                f"max_loras {max_loras} cannot hold one adapter of each of the {self.max_models} models "
                f"(max_models) in a batch, so requests to some would queue behind the others: set max_loras "
                f">= {self.max_models} or leave it unset (2 x max_models = {2 * self.max_models})"
            )
        per_model = self.adapters_per_model()
        needed = per_model * self.max_models
        if max_cpu_loras < needed:
            raise ValueError(
                f"max_cpu_loras {max_cpu_loras} is fewer than the {needed} adapters the stack keeps loaded "
                f"for {self.max_models} models ({per_model} each: champion and challenger under two names, "
                f"a retiring version, one being evaluated, {self.warm_versions} warm versions); vLLM would "
                f"evict and re-read adapters from disk: set max_cpu_loras >= {needed}, lower max_models or "
                "warm_versions, or leave it unset"
            )
        if max_cpu_loras < max_loras:
            raise ValueError(f"max_cpu_loras {max_cpu_loras} must be >= max_loras {max_loras} (vLLM's rule)")
        return self

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
