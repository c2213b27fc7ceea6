"""The command line contract (DESIGN 8): commands exist, help works, errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main


@pytest.mark.parametrize("command", [[], ["run"], ["collect"], ["publish"], ["schemas"]])
def test_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_top_level_help_lists_the_commands() -> None:
    output = CliRunner().invoke(main, ["--help"]).output
    for command in ("run", "collect", "publish", "schemas"):
        assert f"  {command} " in output


def test_bad_settings_exit_2_with_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "many")
    monkeypatch.setenv("HELICONE_API_KEY", "sk-helicone-secret-value")
    monkeypatch.setenv("WORKER_WEB_PORT", "99999")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2
    assert "TOPIC_PARTITIONS:" in result.output and "WORKER_WEB_PORT:" in result.output
    assert "sk-helicone-secret-value" not in result.output


def test_schemas_write_and_check(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["schemas", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(main, ["schemas", "--out", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "decision.schema.json").write_text("{}")
    result = runner.invoke(main, ["schemas", "--out", str(tmp_path), "--check"])
    assert result.exit_code == 1 and "decision.schema.json" in result.output
