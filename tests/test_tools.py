"""The one way a test says something is missing (tests/tools.py) and the one list of clean-room skips
(the needs_host marker, tests/conftest.py), checked in pytest sessions of their own."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tools

TESTS = Path(__file__).resolve().parent
# A reason that says something is not installed, whatever the words: it must come from tools.missing.
MISSING_WORDS = ("install", "not found", "missing", "on this machine")

SESSION_TESTS = '''
import pytest
import tools

tools.TOOLS["absent"] = (("/nonexistent/absent",), "absent-package")


@pytest.fixture
def broken():
    raise AssertionError("set up although the test was skipped")


@pytest.mark.needs_host("writes /proc/sys")
def test_tunes(broken):
    pass


def test_two_engines(second_engine):
    pass


@pytest.mark.needs_tool("absent")
def test_absent():
    pass


def test_plain():
    pass
'''


def session(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """A pytest session over SESSION_TESTS with this suite's conftest and tools, in env (less CI and the
    clean-room flag, unless given)."""
    for name in ("conftest.py", "tools.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_session.py").write_text(SESSION_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    needs_host\n    needs_tool\n")
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "EPOLLBENCH_CLEAN_ROOM")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA", *args, str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**base, **env})


def outcomes(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """test name: PASSED, SKIPPED, FAILED or ERROR, from -v's progress lines."""
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("test_session.py::"):
            name, word = line.split("::", 1)[1].split()[:2]
            found[name] = word
    return found


def test_in_the_clean_room_needs_host_skips_before_fixtures_and_lists_every_such_skip(tmp_path):
    proc = session(tmp_path, EPOLLBENCH_CLEAN_ROOM="1")
    results = outcomes(proc)
    assert results["test_plain"] == "PASSED", proc.stdout
    assert "set up although" not in proc.stdout
    assert "clean room: writes /proc/sys" in proc.stdout
    summary = proc.stdout.split("clean-room skips: 2", 1)[1]
    assert "test_session.py::test_tunes: writes /proc/sys" in summary
    assert "test_session.py::test_two_engines: starts a second dockerd" in summary


def test_outside_the_clean_room_nothing_is_listed_and_a_missing_tool_skips(tmp_path):
    proc = session(tmp_path, "-k", "absent or plain")  # the others would need the host here
    assert proc.returncode == 0, proc.stdout
    assert outcomes(proc) == {"test_absent": "SKIPPED", "test_plain": "PASSED"}
    assert "absent is not installed: apt-get install absent-package (./run test installs it)" in proc.stdout
    assert "clean-room skips" not in proc.stdout


def test_under_ci_a_missing_tool_fails_with_the_same_reason(tmp_path):
    proc = session(tmp_path, CI="true", EPOLLBENCH_CLEAN_ROOM="1")
    assert proc.returncode == 1
    assert "CI=true: absent is not installed: apt-get install absent-package" in proc.stdout
    results = outcomes(proc)
    assert results["test_absent"] == "ERROR", proc.stdout
    assert results["test_plain"] == "PASSED"
    assert results["test_tunes"] == results["test_two_engines"] == "SKIPPED", "the clean-room list stays skips"


def test_missing_skips_outside_ci_and_fails_under_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^x is not installed$"):
        tools.missing("x is not installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="^CI=true: x is not installed$"):
        tools.missing("x is not installed")


def reasons(tree: ast.AST):
    """(line, text) of every string in a pytest.skip/skipif/fail/importorskip call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("skip", "skipif", "fail", "importorskip"):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for part in ast.walk(arg):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        yield node.lineno, part.value


def test_every_skip_for_something_not_installed_goes_through_tools():
    """A skip that says a tool is missing, written anywhere but tools.py, would stay a skip in CI."""
    bypassing = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("tools.py", Path(__file__).name):
            continue
        for line, text in reasons(ast.parse(path.read_text())):
            if any(word in text.lower() for word in MISSING_WORDS):
                bypassing.append(f"{path.name}:{line}: {text}")
    assert bypassing == []
