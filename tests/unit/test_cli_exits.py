"""The command line's one way of failing: ``error: CODE: message`` on stderr, then the exit."""

from __future__ import annotations

import pytest

from gateway.cli.exits import EXIT_INVALID, EXIT_USAGE, exit_on_error, fail
from gateway.errors import ConfigError, UsageError


def test_fail_prints_the_code_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        fail(UsageError("name delivery ids or pass --all-failed"))
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"error: {UsageError.code}: name delivery ids or pass --all-failed\n"


def test_a_gateway_error_inside_exits_2_unless_told(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info, exit_on_error():
        raise ConfigError("[server] port must be a number")
    assert info.value.code == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: {ConfigError.code}: [server] port")


def test_a_refusal_exits_as_told_but_a_usage_error_still_2() -> None:
    with pytest.raises(SystemExit) as refused, exit_on_error(refused=EXIT_INVALID):
        raise ConfigError("refused")
    assert refused.value.code == EXIT_INVALID
    with pytest.raises(SystemExit) as usage, exit_on_error(refused=EXIT_INVALID):
        raise UsageError("bad call")
    assert usage.value.code == EXIT_USAGE


def test_an_os_error_names_its_file(capsys: pytest.CaptureFixture[str]) -> None:
    @exit_on_error()
    def command() -> None:
        open("/nonexistent/node.toml", encoding="utf-8")  # noqa: SIM115

    with pytest.raises(SystemExit) as info:
        command()
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {UsageError.code}: No such file or directory: /nonexistent/")


def test_other_exceptions_are_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError), exit_on_error():
        _ = 1 / 0
