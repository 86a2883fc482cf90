"""Where the control plane keeps its state: MLflow's backend store and artifact destination, Prefect's
database. Unset, the local stack uses SQLite and files under .loraops/; set (params.yaml `stack:`), the
same servers run on PostgreSQL with artifacts in S3: the production control plane (infra/README.md)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import replace
from os import PathLike

from loraops.services import ServiceSpec

MLFLOW_DB_SCHEMES = ("postgresql+psycopg", "sqlite")
PREFECT_DB_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")
ARTIFACT_SCHEMES = ("s3",)
PGPASS_HINT = (
    "keep the password out of params.yaml (it is committed, and the URL is passed on to the server's "
    "command line or environment): put it in ~/.pgpass (host:port:database:user:password, mode 600) of "
    "the user that runs the servers; libpq (MLflow) and asyncpg (Prefect) both read it"
)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _has_password(url: str) -> bool:
    return bool(urllib.parse.urlsplit(url).password)  # "user:@host" (empty) is no password


def check_mlflow_backend_store_uri(url: str) -> str:
    """MLflow's database: postgresql+psycopg://USER@HOST:PORT/DB (psycopg 3 is the installed driver)."""
    scheme = _scheme(url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ValueError(
            f"'{scheme}://' makes SQLAlchemy use psycopg2, which the control environment does not have: "
            "write postgresql+psycopg://USER@HOST:5432/DB (psycopg 3)"
        )
    if scheme not in MLFLOW_DB_SCHEMES:
        raise ValueError(
            "MLflow's backend store must be postgresql+psycopg://USER@HOST:5432/DB (or sqlite:///PATH), "
            f"not '{scheme or url}'"
        )
    if _has_password(url):
        raise ValueError(f"the URL carries a password: {PGPASS_HINT}")
    return url


def check_prefect_database_url(url: str) -> str:
    """Prefect's database: postgresql+asyncpg://USER@HOST:PORT/DB (its server is async)."""
    scheme = _scheme(url)
    if scheme.startswith("postgres") and scheme != "postgresql+asyncpg":
        raise ValueError(
            f"Prefect's server talks to PostgreSQL through asyncpg only, not '{scheme}://': write "
            "postgresql+asyncpg://USER@HOST:5432/DB"
        )
    if scheme not in PREFECT_DB_SCHEMES:
        raise ValueError(
            "Prefect's database must be postgresql+asyncpg://USER@HOST:5432/DB (or "
            f"sqlite+aiosqlite:///PATH), not '{scheme or url}'"
        )
    if _has_password(url):
        raise ValueError(f"the URL carries a password: {PGPASS_HINT}")
    return url


def check_artifacts_destination(url: str) -> str:
    """MLflow's artifact destination: s3://BUCKET[/PREFIX] (boto3 is the installed client)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ARTIFACT_SCHEMES or not parts.netloc:
        raise ValueError(
            "write s3://BUCKET/PREFIX (an S3-compatible store also needs stack.mlflow_s3_endpoint_url); "
            "unset, artifacts stay in .loraops/mlflow/artifacts"
        )
    return url.rstrip("/")


def check_endpoint_url(url: str) -> str:
    """An S3-compatible endpoint: http(s)://HOST[:PORT]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("write the S3 endpoint as http(s)://HOST:PORT (unset: AWS S3)")
    return url.rstrip("/")


def _with_option(command: Sequence[str | PathLike[str]], flag: str, value: str) -> list[str | PathLike[str]]:
    """``command`` with the value after ``flag`` replaced (the flag appended when missing)."""
    out = list(command)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def with_mlflow_stores(
    spec: ServiceSpec,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    s3_endpoint_url: str | None,
) -> ServiceSpec:
    """The MLflow server ``spec`` on the given stores (each None: the spec's own SQLite/local default).

    Artifacts stay served by the server (``--serve-artifacts``): clients upload and download through it
    and need no S3 credentials; the server itself takes them from its environment (the AWS chain)."""
    command = list(spec.command)
    env = dict(spec.env)
    if backend_store_uri is not None:
        command = _with_option(command, "--backend-store-uri", backend_store_uri)
    if artifacts_destination is not None:
        command = _with_option(command, "--artifacts-destination", artifacts_destination)
    if s3_endpoint_url is not None:
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint_url
    if "--serve-artifacts" not in command:
        command.append("--serve-artifacts")
    return replace(spec, command=command, env=env)


def prefect_database_env(database_url: str | None) -> dict[str, str]:
    """The Prefect server's variables for ``database_url`` (none: its SQLite under PREFECT_HOME)."""
    if database_url is None:
        return {}
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url}
