"""params.yaml `train:` section: what to fine-tune and how."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    axolotl_config: str = Field(
        "axolotl_configs/lora_tiny_cpu.yaml",
        description="Axolotl preset (relative to the workspace) that these values are applied on top of.",
    )
    adapter: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora; qlora (4-bit base, needs a CUDA GPU); full (no adapter, all weights)."
    )
    lora_r: int = Field(16, ge=1, le=512, description="LoRA rank. 16 is the usual default.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha; unset means 2 * lora_r.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get LoRA weights (all linear layers of a Llama by default).",
    )
    num_epochs: int = Field(3, ge=1, le=20, description="Passes over the training split; 1-3 is usual.")
    learning_rate: float = Field(2e-3, gt=0, lt=1, description="Peak learning rate (cosine schedule).")
    micro_batch_size: int = Field(16, ge=1, description="Examples per device step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated per optimizer step.")
    sequence_len: int = Field(
        256, ge=32, description="Max tokens per example; longer examples are dropped by Axolotl."
    )
    seed: int = Field(42, description="Training seed.")
    replay_fraction: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="Against catastrophic forgetting: mix in general examples (the base model's own "
        "skills corpus, or replay_file) amounting to this share of the training split.",
    )
    replay_file: str | None = Field(
        None,
        description="Alpaca JSONL of general examples to replay (relative to the workspace); unset with a "
        "built base model: its skills corpus.",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="cpu switches off Axolotl's Triton kernels and mixed precision."
    )
    cpu_threads: int | None = Field(
        1,
        ge=1,
        description="OpenMP threads of a device: cpu run; unset means one per core. For the tiny model "
        "on a busy 2-core machine one thread trained several times faster than two (spin-waits).",
    )
    launcher: Literal["python", "accelerate", "torchrun"] = Field(
        "python",
        description="How Axolotl starts: python on one device, accelerate/torchrun for several GPUs.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Raw Axolotl keys applied last (escape hatch)."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.adapter == "qlora" and self.device != "cuda":
            raise ValueError(
                "adapter: qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                "use adapter: lora with device: cpu, or device: cuda on a GPU host"
            )
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        return self
