"""Benchmark: what loraops adds to a training launch, locally and as a SageMaker job against moto.

The reference, measured in the same run: the same rendered Axolotl config trained by a bare
``axolotl train`` subprocess (no loraops). Axolotl's own start-up (imports, dataset preparation, model
load) is in both, so

    platform overhead = loraops stage wall time - bare axolotl wall time

with its parts: render (job, preset, settings, config file), the launch's process and log handling,
MLflow logging (run, params, per-step metrics, final metrics, adapter upload) and registration. For the
SageMaker launcher against moto (the emulator plays the job): uploads and CreateTrainingJob, the job's
/opt/ml layout and downloads, polling latency, CloudWatch log shipping and reading, model.tar.gz. Each
stage also prints ``train_runtime`` (Axolotl's own training loop) so the whole breakdown adds up.

    .venv/bin/python bench/bench_train_launch.py [--steps 20] [--params examples/tiny/params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.monotonic() - started


def workspace(tmp: Path, steps: int, params_file: Path) -> tuple[Path, Any, str]:
    """A workspace with 80 training and 16 validation tickets in the data format of ``params_file``, and
    that file's training settings cut to ``steps`` steps (the tiny model's: a higher learning rate)."""
    from loraops.config import load_params
    from loraops.data.demo import as_chat, generate_tickets

    ws = tmp / "ws"
    shutil.copytree(ROOT / "axolotl_configs", ws / "axolotl_configs")
    loaded = load_params(params_file)
    records: list[Any] = generate_tickets(96, seed=5)
    if loaded.data.format == "chat":
        records = [as_chat(r) for r in records]
    (ws / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:80]))
    (ws / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[80:]))
    overrides = {"max_steps": steps, "logging_steps": 1, "save_strategy": "steps", "save_steps": 10}
    train = loaded.train.model_copy(
        update={"num_epochs": 1, "replay_fraction": 0.0, "overrides": {**loaded.train.overrides, **overrides}}
    )
    return ws, train, loaded.data.format


def bare_axolotl(config: Path, log: Path, cpu_threads: int) -> float:
    """The reference: ``axolotl train CONFIG`` as a user would run it, same env, no loraops."""
    from loraops.envs import require, trainer_env
    from loraops.train.axolotl_runner import cpu_thread_env

    trainer = require(trainer_env())
    environ = trainer.environ(cpu_thread_env(cpu_threads))
    environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # as loraops' launch does
    started = time.monotonic()
    with log.open("w") as out:
        subprocess.run(
            [trainer.bin / "axolotl", "train", config, "--launcher", "python"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return time.monotonic() - started


def mlflow_server(state: Path) -> tuple[str, Callable[[], None]]:
    from loraops.registry.server import mlflow_service_spec
    from loraops.services import ServiceManager, free_port

    manager = ServiceManager(state)
    port = free_port()
    manager.start(mlflow_service_spec(state, port))
    return f"http://127.0.0.1:{port}", lambda: manager.stop("mlflow")


def moto_server(log: Path) -> tuple[str, Callable[[], None]]:
    from loraops.services import free_port, http_ok

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    while not http_ok(f"{url}/moto-api/"):
        time.sleep(0.2)
    return url, lambda: os.killpg(proc.pid, signal.SIGTERM)


def stage(
    label: str,
    launcher: Any,
    ws: Path,
    params: Any,
    base: str,
    mlflow_url: str,
    run_dir: Path,
    data_format: Any = "alpaca",
) -> dict[str, float]:
    """The flow's train + register steps for one launcher, timed part by part."""
    from loraops.registry.params import RegistryParams
    from loraops.registry.tracking import MetricStream, Registry
    from loraops.train.run import train_adapter

    parts: dict[str, float] = {}
    started = time.monotonic()
    registry = Registry(mlflow_url, RegistryParams(model_name=f"bench-{label}", experiment="bench"))
    with timed(parts, "mlflow"):
        run_ctx = registry.run(run_name=f"bench-{label}")
        run = run_ctx.__enter__()
        run.log_params(params.model_dump(mode="json", exclude={"overrides", "sagemaker"}))
    metrics = MetricStream(run)
    logging_s = 0.0

    def on_metrics(values: dict[str, float]) -> None:
        nonlocal logging_s
        t = time.monotonic()
        metrics.add(values)
        logging_s += time.monotonic() - t

    train_started = time.monotonic()
    result = train_adapter(
        ws,
        params,
        base_model=base,
        train_file=ws / "train.jsonl",
        val_file=ws / "val.jsonl",
        run_dir=run_dir,
        on_metrics=on_metrics,
        launcher=launcher,
        data_format=data_format,
    )
    parts["launch"] = time.monotonic() - train_started - logging_s
    with timed(parts, "mlflow"):
        metrics.flush()
        run.log_metrics(result.final_metrics)
        run.set_tags(result.run_tags())
        run.log_artifacts(result.adapter_dir, "adapter")
        run.log_artifact(result.config_path, "axolotl")
    parts["mlflow"] += logging_s
    with timed(parts, "register"):
        registry.register_adapter(run.run_id, "adapter")
        run_ctx.__exit__(None, None, None)
    parts["wall"] = time.monotonic() - started
    parts["train_runtime"] = next((h["train_runtime"] for h in result.history if "train_runtime" in h), 0.0)
    parts["render"] = float(result.details.get("render_s", result.details.get("prepare_s", 0.0)))
    (run_dir / "config-path").write_text(str(result.config_path))
    return parts


def sagemaker_stage(
    ws: Path, params: Any, base: str, mlflow_url: str, moto_url: str, tmp: Path, data_format: Any
) -> dict[str, float]:
    """The same stage through the SageMaker launcher against moto (the emulator plays the job)."""
    from loraops.data.params import RemoteParams
    from loraops.files import file_md5
    from loraops.train.params import EmulateParams, SageMakerParams
    from loraops.train.sagemaker import AwsClients, S3Uri, SageMakerLauncher, dvc_object_uri
    from loraops.workspace import Workspace

    clients = AwsClients.create("us-east-1", moto_url)
    clients.s3.create_bucket(Bucket="bench")
    remote = RemoteParams(name="s3", url="s3://bench/dvc", endpoint_url=moto_url)
    for name in ("train.jsonl", "val.jsonl"):
        uri = dvc_object_uri(S3Uri.parse(remote.url), file_md5(ws / name))
        clients.s3.upload_file(str(ws / name), uri.bucket, uri.key)
    sm_params = SageMakerParams(
        role_arn="arn:aws:iam::123456789012:role/bench",
        image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/loraops-trainer:bench",
        s3_prefix="s3://bench/loraops",
        endpoint_url=moto_url,
        poll_initial_s=1,
        poll_max_s=4,
        emulate=EmulateParams(),
    )
    sagemaker = SageMakerLauncher(sm_params, Workspace(ws), data_remote=remote, clients=clients)
    return stage("sagemaker", sagemaker, ws, params, base, mlflow_url, tmp / "s", data_format)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate reference and local runs; the fastest of each counts"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="base model, data format, training (default: the demo's; or examples/tiny/params.yaml)",
    )
    parser.add_argument("--no-sagemaker", action="store_true", help="only the local launcher")
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    from loraops.config import load_params
    from loraops.train.local import LocalLauncher
    from loraops.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ws, params, data_format = workspace(tmp, args.steps, args.params)
    base_model = load_params(args.params).base_model
    base = base_model.resolve(ROOT / ".loraops" / "cache" / "models")
    print(f"base model {base}, {args.steps} steps per run, {args.rounds} rounds")
    mlflow_url, stop_mlflow = mlflow_server(tmp / "mlflow")
    moto_url, stop_moto = moto_server(tmp / "moto.log")
    try:
        # Alternating rounds, fastest of each: file caches and the machine's other load favour neither side.
        locals_: list[dict[str, float]] = []
        references: list[float] = []
        for round_ in range(args.rounds):
            run_dir = tmp / f"l{round_}"
            launcher = LocalLauncher(Workspace(ws).runs / "train")
            locals_.append(
                stage(f"local{round_}", launcher, ws, params, base, mlflow_url, run_dir, data_format)
            )
            reference_config = tmp / f"reference{round_}.yaml"
            # the same config: its output and prepared-dataset directories were removed after the run
            shutil.copy2(Path((run_dir / "config-path").read_text()), reference_config)
            references.append(
                bare_axolotl(reference_config, tmp / f"reference{round_}.log", params.cpu_threads)
            )
            shutil.rmtree(Workspace(ws).runs / "train", ignore_errors=True)
        local = min(locals_, key=lambda parts: parts["wall"])
        reference = min(references)

        if args.no_sagemaker:
            remote_stage = None
        else:
            remote_stage = sagemaker_stage(ws, params, base, mlflow_url, moto_url, tmp, data_format)
    finally:
        stop_mlflow()
        stop_moto()

    print(
        f"bare `axolotl train` (reference, same config, {args.steps} steps): {reference:6.1f} s "
        f"(fastest of {', '.join(f'{r:.1f}' for r in references)}); local stage walls: "
        + ", ".join(f"{p['wall']:.1f}" for p in locals_)
    )
    print(
        "training throughput, loraops local stage / bare axolotl (same steps): "
        f"{reference / local['wall']:.3f}x   (target >= 0.95)"
    )
    stages = [("local", local)] + ([("sagemaker (moto + emulator)", remote_stage)] if remote_stage else [])
    for label, parts in stages:
        rows = [
            ("stage wall time", parts["wall"], f"ratio to the reference {parts['wall'] / reference:5.2f}"),
            ("Axolotl train_runtime", parts["train_runtime"], ""),
            (
                "wall - train_runtime",
                parts["wall"] - parts["train_runtime"],
                "Axolotl's own start-up included",
            ),
            ("platform overhead", parts["wall"] - reference, "stage wall - bare axolotl; target <= ~10 s"),
            ("  render / job inputs", parts["render"], ""),
            ("  launch beyond axolotl", parts["launch"] - reference, "process, logs, polling, job I/O"),
            ("  MLflow logging", parts["mlflow"], "run, params, per-step metrics, adapter"),
            ("  registration", parts["register"], ""),
        ]
        print(f"\n== {label}")
        for name, seconds, note in rows:
            print(f"   {name:<24s} {seconds:7.2f} s   {note}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
