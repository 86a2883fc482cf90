"""`loraops data validate | prepare | version | checkout` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_defects.support import alpaca_records, build_tokenizer, make_ws, prepared_files, write_jsonl
from loraops.basemodel.recipe import BaseModelRecipe
from loraops.cli import main


@pytest.mark.slow  # the CLI with real `dvc` runs
def test_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = build_tokenizer(tmp_path / "tok")
    ws = make_ws(tmp_path / "ws", tok)
    raw = ws.root / "data/raw/tickets.jsonl"
    write_jsonl(raw, alpaca_records(150))
    cli = ["--workspace", str(ws.root), "data"]

    assert main([*cli, "validate"]) == 0
    assert "150 examples (alpaca, detected), 0 errors" in capsys.readouterr().out

    assert main([*cli, "prepare"]) == 0
    assert capsys.readouterr().out.startswith("prepared: ")
    assert main([*cli, "prepare"]) == 0
    assert capsys.readouterr().out.startswith("unchanged: ")

    assert main([*cli, "version"]) == 0
    tag = capsys.readouterr().out.strip()
    assert len(tag.split("@")[0]) == 32
    good = prepared_files(ws)

    with raw.open("a", encoding="utf-8") as fh:
        fh.write('{"instruction": "a", "output": 5}\n\n{"instruction": "b", "output": "x", "outptu": "y"}\n')
    assert main([*cli, "validate", "--report", str(tmp_path / "rep")]) == 1
    captured = capsys.readouterr()
    assert (
        "data/raw/tickets.jsonl:151: error: field 'output' must be a string, got number [wrong_type]"
        in captured.err
    )
    assert "data/raw/tickets.jsonl:152: warning: empty line [blank_line]" in captured.err
    assert "tickets.jsonl:153: warning: unknown field 'outptu' (did you mean 'output'?)" in captured.err
    assert "1 errors, 2 warnings" in captured.out
    assert (tmp_path / "rep/report.json").exists() and (tmp_path / "rep/report.html").exists()
    assert main([*cli, "validate", "-q"]) == 1
    assert "warning" not in capsys.readouterr().err

    assert main([*cli, "prepare"]) == 2  # a LoraopsError: one line, no traceback
    err = capsys.readouterr().err
    assert "loraops: error: 1 error(s) in data/raw/tickets.jsonl" in err
    assert prepared_files(ws) == good

    write_jsonl(raw, alpaca_records(170))
    assert main([*cli, "prepare", "--json"]) == 0
    assert '"unchanged": false' in capsys.readouterr().out
    assert prepared_files(ws) != good
    assert main([*cli, "checkout", tag]) == 0
    assert "restored data version" in capsys.readouterr().out
    assert prepared_files(ws) == good
    assert main([*cli, "checkout", "nonsense"]) == 2


def test_a_file_is_a_plain_argument_and_a_base_model_build_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`loraops data validate FILE` (relative to where the user is) and, when the token check needs a
    base model that is not built yet, the line said before the build starts."""
    from loraops.data import commands

    tok = build_tokenizer(tmp_path / "tok")
    ws = make_ws(tmp_path / "ws", tok)
    elsewhere = tmp_path / "mine"
    write_jsonl(elsewhere / "tickets.jsonl", alpaca_records(40))
    monkeypatch.chdir(elsewhere)
    assert main(["--workspace", str(ws.root), "data", "validate", "tickets.jsonl", "--no-tokens"]) == 0
    assert "40 examples (alpaca, detected), 0 errors" in capsys.readouterr().out

    recipe = BaseModelRecipe(name="loraops-tiny", seed=1234)
    notice = commands.build_notice("build", recipe, tmp_path / "empty-cache")
    assert notice is not None and f"building {recipe.name} first" in notice and "--no-tokens skips" in notice
    assert commands.build_notice("org/model", recipe, tmp_path / "empty-cache") is None
