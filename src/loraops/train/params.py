"""params.yaml `train:` section: what to fine-tune, how, and where (this machine or SageMaker)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AxolotlLauncher = Literal["python", "accelerate", "torchrun"]

# On-demand USD per instance-hour (us-east-1, list prices of SageMaker training instances). Spot
# savings are not in these numbers: SageMaker bills spot jobs for fewer seconds (BillableTimeInSeconds).
DEFAULT_SAGEMAKER_PRICES: dict[str, float] = {
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.12xlarge": 7.09,
    "ml.g5.48xlarge": 20.36,
    "ml.g6.2xlarge": 1.222,
    "ml.g6e.2xlarge": 2.808,
    "ml.p4d.24xlarge": 37.688,
    "ml.p5.48xlarge": 113.07,
    "ml.m5.xlarge": 0.23,
    "ml.c5.2xlarge": 0.408,
}

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")


class EmulateParams(BaseModel):
    """Plays a SageMaker job on this machine, for an AWS stand-in such as moto (which records jobs but
    runs nothing). Never used against real AWS: the launcher refuses it unless endpoint_url is loopback."""

    model_config = ConfigDict(extra="forbid")

    interrupt_after_checkpoints: int | None = Field(
        None,
        ge=1,
        description="Simulate one spot interruption once this many checkpoints reached S3; SageMaker then "
        "restarts the job with the checkpoints restored (what a managed spot job does).",
    )


class SageMakerParams(BaseModel):
    """`train.sagemaker:` where a `launcher: sagemaker` job runs and what it may cost."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field("us-east-1", description="AWS region of the job, the bucket and the ECR image.")
    role_arn: str = Field(
        ...,
        description="IAM role SageMaker assumes (infra/cloudformation.yaml creates a least-privilege one).",
    )
    image_uri: str = Field(
        ..., description="Trainer image in ECR, built from infra/Dockerfile.trainer (CUDA trainer lock)."
    )
    s3_prefix: str = Field(
        ...,
        description="s3://bucket/prefix for job inputs, outputs and checkpoints (the bucket of the "
        "CloudFormation stack). The prepared data is read from the DVC S3 remote, not copied here.",
    )
    instance_type: str = Field("ml.g5.2xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int = Field(
        1, ge=1, le=64, description=">1: multi-node through Axolotl's accelerate launcher."
    )
    volume_size_gb: int = Field(100, ge=1, le=16384, description="EBS volume per instance.")
    spot: bool = Field(True, description="Managed spot training: cheaper, may be interrupted and resumed.")
    max_run_s: int = Field(86_400, ge=60, description="MaxRuntimeInSeconds: training time limit.")
    max_wait_s: int | None = Field(
        None,
        description="MaxWaitTimeInSeconds (spot only): run time + waiting for capacity; unset: 2x max_run_s.",
    )
    base_model_s3_uri: str | None = Field(
        None,
        description="Base model directory in S3 (a 'base_model' channel). Unset: a built base model is "
        "uploaded once; a Hugging Face id is downloaded by the job (set HF_TOKEN in environment).",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables of the training container."
    )
    endpoint_url: str | None = Field(
        None, description="AWS endpoint for S3, SageMaker and CloudWatch Logs (moto in tests); unset: AWS."
    )
    usd_per_hour: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SAGEMAKER_PRICES),
        description="On-demand price per instance-hour, by instance type (the run's cost uses it).",
    )
    poll_initial_s: float = Field(5.0, gt=0, description="First wait between DescribeTrainingJob calls.")
    poll_max_s: float = Field(60.0, gt=0, description="Longest wait between polls (exponential backoff).")
    stop_timeout_s: float = Field(600.0, gt=0, description="How long to wait for a stopped job to end.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags of the training job.")
    emulate: EmulateParams | None = Field(
        None, description="Play the job on this machine (moto only): see EmulateParams."
    )

    @model_validator(mode="after")
    def _check(self) -> SageMakerParams:
        if not _ROLE_ARN.match(self.role_arn):
            raise ValueError(
                f"role_arn {self.role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        for key in ("s3_prefix", "base_model_s3_uri"):
            value = getattr(self, key)
            if value is not None and not _S3_URI.match(value):
                raise ValueError(f"{key} {value!r} is not an s3://bucket/prefix URI")
        if self.spot and self.max_wait_s is not None and self.max_wait_s < self.max_run_s:
            raise ValueError(
                f"max_wait_s {self.max_wait_s} is below max_run_s {self.max_run_s}: SageMaker requires "
                "MaxWaitTimeInSeconds >= MaxRuntimeInSeconds for spot jobs"
            )
        return self

    def wait_s(self) -> int:
        return self.max_wait_s if self.max_wait_s is not None else 2 * self.max_run_s

    def price(self) -> float | None:
        return self.usd_per_hour.get(self.instance_type)


class TrainParams(BaseModel):
    """`train:` values win over the preset only where params.yaml sets them (see train/settings.py)."""

    model_config = ConfigDict(extra="forbid")

    axolotl_config: str = Field(
        "axolotl_configs/lora_tiny_cpu.yaml",
        description="Axolotl preset (relative to the workspace). Its own values stand unless a key below "
        "is set in params.yaml.",
    )
    adapter: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora; qlora (4-bit base, needs a CUDA GPU). full is refused: a fully fine-tuned model "
        "cannot be hot-swapped as an adapter on the served base model.",
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
        description="Against catastrophic forgetting: mix in general examples amounting to this share of "
        "the training split: replay_file; else the built model's skills corpus; else a real model's own "
        "answers to everyday instructions, asked of the served base model once (train/self_replay.py).",
    )
    replay_file: str | None = Field(
        None,
        description="JSONL of general examples to replay, alpaca or chat (relative to the workspace).",
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
    launcher: Literal["local", "sagemaker"] = Field(
        "local",
        description="Where training runs: local (Axolotl in the trainer environment of this machine) or "
        "sagemaker (an AWS SageMaker training job, settings in train.sagemaker).",
    )
    axolotl_launcher: AxolotlLauncher = Field(
        "python",
        description="How Axolotl starts its processes: python on one device, accelerate/torchrun for "
        "several GPUs (Axolotl's own distributed engine; DeepSpeed/FSDP come from the preset).",
    )
    local_usd_per_hour: float = Field(
        0.0, ge=0, description="Cost of this machine per hour, for the run's cost (local launcher)."
    )
    sagemaker: SageMakerParams | None = Field(None, description="Settings of the sagemaker launcher.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Raw Axolotl keys applied last (escape hatch)."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_launcher(cls, data: Any) -> Any:
        # Before launchers existed, `launcher` named Axolotl's process launcher; still accepted.
        if isinstance(data, dict) and data.get("launcher") in ("python", "accelerate", "torchrun"):
            data = dict(data)
            data.setdefault("axolotl_launcher", data["launcher"])
            data["launcher"] = "local"
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.adapter == "full":
            raise ValueError(
                "adapter: full is not supported: a fully fine-tuned model cannot be hot-swapped as an "
                "adapter on the served base model; use lora, or qlora on a CUDA GPU"
            )
        if self.adapter == "qlora" and self.device != "cuda":
            raise ValueError(
                "adapter: qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                "use adapter: lora with device: cpu, or device: cuda on a GPU host"
            )
        if self.launcher == "sagemaker" and self.sagemaker is None:
            raise ValueError(
                "launcher: sagemaker needs a train.sagemaker section (role_arn, image_uri, s3_prefix, ...)"
            )
        return self

    def explicit(self) -> set[str]:
        """The keys params.yaml set itself (the rest come from the preset, else the defaults above)."""
        return set(self.model_fields_set)
