"""CI's skip gate (tests/require_no_skips.py) on JUnit reports made up here."""

from __future__ import annotations

from pathlib import Path

import pytest
import require_no_skips

PG = '<testcase classname="tests.integration.test_storage" name="test_x[postgresql]" time="0.5"/>'


def report(tmp_path: Path, *cases: str) -> Path:
    path = tmp_path / "report.xml"
    body = "".join(cases)
    path.write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def skipped(classname: str, name: str, message: str, kind: str = "pytest.skip") -> str:
    return (
        f'<testcase classname="{classname}" name="{name}" time="0.01">'
        f'<skipped type="{kind}" message="{message}">where: {message}</skipped></testcase>'
    )


def test_a_run_without_skips_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert require_no_skips.main([str(report(tmp_path, PG))]) == 0
    assert "ok: 1 tests" in capsys.readouterr().out


def test_a_postgresql_case_skipped_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = report(
        tmp_path,
        PG,
        skipped(
            "tests.integration.test_storage", "test_y[postgresql]", "GATEWAY_TEST_POSTGRES_URL"
        ),
    )
    assert require_no_skips.main([str(path)]) == 1
    assert "test_y[postgresql]" in capsys.readouterr().err


def test_any_unlisted_skip_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = report(
        tmp_path, PG, skipped("tests.unit.test_trust", "test_other_ca", "openssl CLI missing")
    )
    assert require_no_skips.main([str(path)]) == 1
    assert "openssl CLI missing" in capsys.readouterr().err


def test_a_listed_skip_passes_only_for_its_reason(tmp_path: Path) -> None:
    entry = require_no_skips.ALLOWED[0]
    test = "test_lxml_and_xmlschema_agree[edoc.edxml]"
    listed = skipped("tests.unit.test_schema", test, entry.reason)
    assert require_no_skips.main([str(report(tmp_path, PG, listed))]) == 0
    other = skipped("tests.unit.test_schema", test, "some other reason")
    assert require_no_skips.main([str(report(tmp_path, PG, other))]) == 1


def test_an_expected_failure_is_not_a_skip(tmp_path: Path) -> None:
    xfail = skipped("tests.unit.test_x", "test_known_bug", "issue 12", kind="pytest.xfail")
    assert require_no_skips.main([str(report(tmp_path, PG, xfail))]) == 0


def test_a_run_without_postgresql_cases_fails(tmp_path: Path) -> None:
    only_sqlite = PG.replace("postgresql", "sqlite")
    assert require_no_skips.main([str(report(tmp_path, only_sqlite))]) == 1


def test_an_unreadable_report_is_a_usage_error(tmp_path: Path) -> None:
    assert require_no_skips.main([str(tmp_path / "missing.xml")]) == 2


def test_slowest_tests_are_printed_first_slowest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fast = '<testcase classname="tests.unit.test_a" name="test_fast" time="0.1"/>'
    slow = '<testcase classname="tests.unit.test_a" name="test_slow" time="9.0"/>'
    assert require_no_skips.main([str(report(tmp_path, PG, fast, slow)), "--slowest", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("== 2 slowest of 3 tests")
    assert lines[1].endswith("tests.unit.test_a::test_slow")
    assert lines[2].endswith("tests.integration.test_storage::test_x[postgresql]")
