"""The local MLflow tracking server (SQLite backend, artifacts served by the server) as a ServiceSpec."""

from __future__ import annotations

import base64
import secrets
import sys
from pathlib import Path

from loraops.files import read_or_create_secret
from loraops.services import ServiceSpec, http_url

# The server caches its webhook list per event this long (MLflow's default is 60 s, so a webhook created
# just after an alias event would miss the alias moves of the next minute).
WEBHOOK_CACHE_TTL_S = 1


def new_fernet_key() -> str:
    # A Fernet key is 32 random bytes, url-safe base64 encoded (what Fernet.generate_key() returns).
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def webhook_encryption_key(state_dir: Path) -> str:
    """MLflow encrypts webhook secrets with this key. It must stay the same across server restarts:
    with a new key every stored webhook fails to deliver and list_webhooks answers 500."""
    return read_or_create_secret(state_dir / "mlflow" / "webhook.key", new_fernet_key)


def mlflow_service_spec(state_dir: Path, port: int, host: str = "127.0.0.1") -> ServiceSpec:
    root = state_dir / "mlflow"
    artifacts = root / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        # The alias sync hook listens on loopback, which MLflow's SSRF guard refuses by default.
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": webhook_encryption_key(state_dir),
        "MLFLOW_WEBHOOK_CACHE_TTL": str(WEBHOOK_CACHE_TTL_S),
        # Job execution (GenAI judges, trace rollups) is not used and starts six huey consumer processes.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(root / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--serve-artifacts",
    ]
    return ServiceSpec(
        name="mlflow",
        command=command,
        port=port,
        health_url=http_url(host, port, "/health"),
        env=env,
        cwd=root,
        start_timeout_s=120.0,
        config_key="stack.mlflow_port",
    )
