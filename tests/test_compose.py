"""compose/*.yml are generated from the runner's definitions: the committed files must be current."""

import subprocess

import pytest

from experiment.run import composefiles


def test_committed_compose_files_are_current(tmp_path):
    written = composefiles.write(tmp_path)
    assert [p.name for p in written] == ["up.yml", "smp.yml"]
    for path in written:
        committed = composefiles.COMPOSE / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `invoke compose`"


@pytest.mark.needs_tool("docker-compose")
@pytest.mark.parametrize("variant", ["up", "smp"])
def test_compose_files_parse_with_docker_compose(variant):
    """Debian's docker-compose v1 reads them, with the variables' defaults filled in."""
    proc = subprocess.run(["docker-compose", "-f", str(composefiles.COMPOSE / f"{variant}.yml"), "config"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ephttpd" in proc.stdout and "--backend\n    - epoll" in proc.stdout
    assert "soft: 20000" in proc.stdout
