"""Exit codes: a gate refusal is an outcome of the loop (`demo` exits 0), a distinct code for scripts
(`retrain` exits 3), and errors exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loraops import cli
from loraops.errors import StageError


@pytest.fixture
def demo_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    (tmp_path / "params.yaml").write_text("")
    monkeypatch.setattr(cli, "_check_envs", lambda: None)
    monkeypatch.setattr(cli, "_ensure_demo_data", lambda ws, params: None)
    monkeypatch.setattr(cli, "cmd_up", lambda args: 0)
    return argparse.Namespace(workspace=str(tmp_path))


@pytest.mark.parametrize(("retrain_code", "demo_code"), [(0, 0), (cli.GATE_REFUSED, 0)])
def test_demo_exits_0_when_the_loop_ran_as_designed(
    demo_ws: argparse.Namespace, monkeypatch: pytest.MonkeyPatch, retrain_code: int, demo_code: int
) -> None:
    monkeypatch.setattr(cli, "cmd_retrain", lambda args: retrain_code)
    assert cli.cmd_demo(demo_ws) == demo_code


def test_errors_of_the_loop_still_fail_the_demo(
    demo_ws: argparse.Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise StageError("training failed")

    monkeypatch.setattr(cli, "cmd_retrain", fail)
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_returning(demo_ws, cli.cmd_demo))
    assert cli.main([]) == 2


def _parser_returning(namespace: argparse.Namespace, func: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=func, **vars(namespace))
    return parser
