"""The servers a sweep can put under test (experiment/run/servers.py): nginx natively with the configuration we
render, the choice of server from the command line, and the server image running nginx, pyhttpd and a
server of the user's own on host networking."""

from __future__ import annotations

import json
import re
import resource
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import docker.errors
import pytest
from httpclient import CLIENT_TIMEOUT, assert_ok, deadconn, next_event, read_response, request, send

from experiment import catalog
from experiment.errors import UserError
from experiment.host import images, machine
from experiment.run import plan, seccomp, servers
from experiment.run.containers import Containers
from experiment.run.services import LOOPBACK

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
needs_nginx = pytest.mark.needs_tool("nginx", root=True)
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
DAY_S = 86400



def directives(conf: str) -> dict[str, list[str]]:
    """Every `name value...;` of an nginx configuration, by name (values of repeated names in order)."""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", conf, re.M):
        found.setdefault(name, []).append(value.strip())
    return found


def seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY_S}
    m = re.fullmatch(r"(\d+)([smhd]?)", value)
    assert m, value
    return int(m[1]) * units[m[2] or "s"]


@contextmanager
def nginx(tmp_path: Path, msgsize: int = 128, timeout: str = servers.NGINX_TIMEOUT):
    """nginx natively on a free port with the configuration servers.nginx_conf renders."""
    port = machine.free_port()
    conf = tmp_path / f"nginx-{port}.conf"
    conf.write_text(servers.nginx_conf(port, msgsize, FD_LIMIT, pid_path=str(tmp_path / f"nginx-{port}.pid"),
                                       timeout=timeout))
    proc = subprocess.Popen([NGINX, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not servers.tcp_connects("127.0.0.1", port):
            assert proc.poll() is None, f"nginx exited {proc.returncode}: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "nginx did not accept connections"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "[emerg]" not in err and "[alert]" not in err, err


@contextmanager
def connected(port: int):
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock, \
            sock.makefile("rb") as reader:
        yield sock, reader


def holding(port: int, count: int):
    """deadconn holding count dead connections to port."""
    return deadconn("--host", "127.0.0.1", "--port", str(port), "-n", str(count))


def deadconn_says(proc: subprocess.Popen, command: str | None = None) -> dict:
    if command:
        send(proc, command)
    return next_event(proc)


# ------------------------------------------------------------------------------------------ nginx natively


@needs_nginx
def test_the_rendered_conf_passes_nginx_t(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(servers.nginx_conf(machine.free_port(), 128, FD_LIMIT, pid_path=str(tmp_path / "nginx.pid")))
    proc = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def test_the_conf_is_one_epoll_worker_sized_by_the_fd_limit_that_holds_connections_for_days():
    conf = servers.nginx_conf(8123, 300, 12345, bind="127.0.0.5")
    d = directives(conf)
    assert d["daemon"] == ["off"] and d["worker_processes"] == ["1"] and d["use"] == ["epoll"]
    assert d["worker_rlimit_nofile"] == ["12345"]
    # Above the fd limit by more than a sixteenth: nginx closes connections itself when fewer are free.
    assert int(d["worker_connections"][0]) * 15 / 16 > 12345
    assert d["access_log"] == ["off"] and d["error_log"] == ["stderr warn"]
    assert d["listen"] == [f"127.0.0.5:8123 backlog={catalog.LISTEN_BACKLOG}"]
    assert int(d["keepalive_requests"][0]) >= 10**9
    # nginx's own defaults would close an idle keep-alive connection after 75 s, a dead one (a request head
    # that never ends) after 60 s, and any keep-alive connection after 1 h: all far past a run here.
    for name in ("keepalive_timeout", "keepalive_time", "client_header_timeout", "send_timeout"):
        assert DAY_S <= seconds(d[name][0]) < 2**31 / 1000, name
    assert d["return"] == ['200 "' + "x" * 300 + '"']
    assert d["pid"] == ["/tmp/nginx.pid"]


def test_the_conf_listens_on_an_ipv6_address_in_brackets():
    assert directives(servers.nginx_conf(8123, 1, 100, bind="::1"))["listen"] == ["[::1]:8123 backlog=2048"]


def test_nginx_cannot_serve_a_body_its_configuration_cannot_hold():
    servers.nginx_conf(8123, servers.NGINX_MAX_MSGSIZE, 100)
    with pytest.raises(UserError, match="at most 4000 bytes"):
        servers.nginx_conf(8123, servers.NGINX_MAX_MSGSIZE + 1, 100)


@needs_nginx
def test_nginx_answers_keep_alive_and_pipelined_requests_with_the_body_size(tmp_path):
    msgsize, count, pipelined = 300, 1000, 50
    with nginx(tmp_path, msgsize=msgsize) as port, connected(port) as (sock, reader):
        for i in range(count):
            sock.sendall(request(f"/{i}"))
            assert_ok(read_response(reader), msgsize=msgsize)
        sock.sendall(request() * pipelined)
        for _ in range(pipelined):
            assert_ok(read_response(reader), msgsize=msgsize)
        sock.sendall(request(version="1.0"))
        assert_ok(read_response(reader), msgsize=msgsize, connection="close")
        assert reader.read() == b""


@needs_nginx
def test_nginx_holds_dead_connections_where_a_short_timeout_would_close_them(tmp_path):
    held, wait_s = 2000, 3
    with nginx(tmp_path) as port, holding(port, held) as proc:
        ready = deadconn_says(proc)
        assert (ready["event"], ready["held"]) == ("ready", held), ready
        time.sleep(wait_s)
        status = deadconn_says(proc, "status")
        assert (status["event"], status["held"]) == ("status", held), status
        with connected(port) as (sock, reader):
            sock.sendall(request())
            assert_ok(read_response(reader))
    # The same check sees closes: with a 1 s client_header_timeout nginx drops every dead connection.
    with nginx(tmp_path, timeout="1s") as port, holding(port, 200) as proc:
        assert deadconn_says(proc)["held"] == 200
        time.sleep(wait_s)
        status = deadconn_says(proc, "status")
        assert status["held"] == 0 and status["failures"]["reset"] == 200, status


@needs_nginx
def test_nginx_holds_as_many_dead_connections_as_its_fd_limit_allows(tmp_path):
    most = plan.max_dead(FD_LIMIT, "epoll", 100)
    with nginx(tmp_path) as port, holding(port, most) as proc:
        ready = deadconn_says(proc)
        assert (ready["event"], ready["held"], ready["failures"]["reset"]) == ("ready", most, 0), ready
        with connected(port) as (sock, reader):
            sock.sendall(request())
            assert_ok(read_response(reader))


# ---------------------------------------------------------------------------------------- choosing a server


def test_each_kind_builds_its_service():
    ephttpd = servers.choose()[0].service("epoll-et", 8080, 128, "0", FD_LIMIT)
    assert ephttpd.command == ("ephttpd", "--backend", "epoll-et", "--bind", LOOPBACK, "--port", "8080",
                               "--msgsize", "128")
    assert (ephttpd.target, ephttpd.readiness, ephttpd.stats, ephttpd.image) == ("server", "json", True, None)

    python = servers.choose("python")[0].service("asyncio", 8081, 64, "1", FD_LIMIT, bind="127.0.0.9")
    assert python.command == ("pyhttpd", "--backend", "asyncio", "--bind", "127.0.0.9", "--port", "8081",
                              "--msgsize", "64")
    assert (python.readiness, python.stats) == ("json", True)

    nginx_service = servers.choose("nginx")[0].service("epoll", 8082, 256, "0,1", 5000)
    shell, flag, script = nginx_service.command
    assert (shell, flag, "$" in script) == ("sh", "-c", False)
    assert shlex.split(script) == ["printf", "%s", servers.nginx_conf(8082, 256, 5000), ">",
                                   servers.NGINX_CONF_PATH, "&&", "exec", "nginx", "-c", servers.NGINX_CONF_PATH]
    assert (nginx_service.readiness, nginx_service.stats, nginx_service.cpuset) == ("tcp", False, "0,1")

    (own,) = servers.choose(image="example/httpd:1", command="httpd -p {port} --size={msgsize} -a '{bind}' -x '{y}'",
                         port="9000")
    assert own.kind == servers.CUSTOM and own.backends == ("own",)
    service = own.service("own", own.port, 128, "0", FD_LIMIT)
    assert service.command == ("httpd", "-p", "9000", "--size=128", "-a", LOOPBACK, "-x", "{y}")
    assert (service.image, service.readiness, service.stats) == ("example/httpd:1", "tcp", False)
    # Every server container runs under our seccomp profile, whatever its engine's default.
    assert {s.seccomp for s in (ephttpd, python, nginx_service, service)} == {seccomp.profile_name()}


def test_our_seccomp_profile_denies_by_default_and_allows_the_io_uring_calls():
    profile = json.loads(seccomp.profile_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert set(seccomp.IO_URING_SYSCALLS) <= seccomp.allowed(profile)
    # Docker's default, not a filter that lets anything through: no ptrace, mount or reboot for a container.
    assert not {"ptrace", "mount", "reboot", "kexec_load"} & seccomp.allowed(profile)
    assert {"epoll_wait", "epoll_ctl", "accept4", "recvfrom", "sendto", "sendmsg"} <= seccomp.allowed(profile)


def test_a_comma_list_names_several_servers_once_each_in_its_order():
    assert [c.kind for c in servers.choose("nginx, python,nginx")] == ["nginx", "python"]
    chosen = servers.choose("custom,ephttpd", image="x/y:1", command="y -p {port}", port="81")
    assert chosen == (servers.Choice(servers.CUSTOM, "x/y:1", "y -p {port}", 81), servers.Choice("ephttpd"))
    assert [c.kind for c in servers.choose()] == ["ephttpd"]


@pytest.mark.parametrize("kind, valid", [("ephttpd", "select,poll,epoll,epoll-et,io_uring,aio-poll,io_uring-recv"),
                                         ("python", "select,poll,epoll,asyncio"), ("nginx", "epoll")])
def test_a_backend_the_server_lacks_is_refused_naming_the_valid_ones(kind, valid):
    (choice,) = servers.choose(kind)
    choice.check_backends(tuple(valid.split(",")))
    with pytest.raises(UserError, match=f"use --backends {valid}$"):
        choice.check_backends(("epoll", "kqueue"))
    with pytest.raises(UserError, match="no backend kqueue"):
        choice.service("kqueue", 8080, 128, "0", FD_LIMIT)


@pytest.mark.parametrize("kwargs, complaint", [
    ({"server": "apache"}, "--server apache: unknown apache; use ephttpd, python, nginx or a comma list"),
    ({"server": "nginx,iis,ephttpd"}, "--server nginx,iis,ephttpd: unknown iis;"),
    ({"server": "nginx", "image": "x", "command": "y", "port": 1}, "both name the server"),
    ({"server": "nginx,custom"}, "add --server-image, --server-cmd, --server-port"),
    ({"image": "x", "port": 80}, "add --server-cmd"),
    ({"command": "httpd"}, "add --server-image, --server-port"),
    ({"image": "x", "command": "httpd", "port": "http"}, "--server-port http: use the TCP port"),
    ({"image": "x", "command": "httpd", "port": 70000}, "--server-port 70000"),
    ({"image": "x", "command": "httpd 'unclosed", "port": 80}, "quote it as a shell would"),
    ({"image": "x", "command": "  ", "port": 80}, "--server-cmd is empty"),
])
def test_a_confused_server_choice_is_one_clear_error(kwargs, complaint):
    with pytest.raises(UserError, match=re.escape(complaint)):
        servers.choose(**kwargs)


# ------------------------------------------------------------------------------------------------ in Docker


@pytest.fixture(scope="module")
def server_image(client, tmp_path_factory):
    return images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build"))["server"].tag


@pytest.fixture
def runner(client):
    containers = Containers(client, f"test-servers-{uuid.uuid4().hex[:8]}", FD_LIMIT)
    yield containers
    containers.remove_all()


def http_get(port: int, msgsize: int) -> None:
    with connected(port) as (sock, reader):
        for _ in range(3):
            sock.sendall(request())
            assert_ok(read_response(reader), msgsize=msgsize)


@pytest.mark.docker
@pytest.mark.parametrize("kind, backend", [("nginx", "epoll"), ("python", "epoll"), ("python", "asyncio")])
def test_the_server_image_runs_each_server_on_host_networking(runner, server_image, kind, backend):
    port, msgsize = machine.free_port(), 200
    service = servers.choose(kind)[0].service(backend, port, msgsize, "0", FD_LIMIT)
    server = runner.run(server_image, service)
    listening = servers.wait_ready(server, service, "127.0.0.1", port, timeout=30)
    assert listening, f"{kind} not ready: {server.output_tail()}"
    assert listening["port"] == port
    if service.readiness == "json":
        assert listening["backend"] == f"python-{backend}" and listening["fd_limit"] == FD_LIMIT
    http_get(port, msgsize)
    assert server.cpu_ns() > 0  # what the sweep reads for every server, stats or not
    code = runner.stop(server, timeout=30)
    assert code == 0, server.output_tail()
    if service.stats:
        stats = json.loads(server.log[-1])
        assert stats["event"] == "stats" and stats["responses_200"] == 3


@pytest.mark.docker
def test_the_server_container_serves_io_uring_recv_under_our_seccomp_filter(runner, server_image):
    port = machine.free_port()
    service = servers.choose()[0].service(catalog.URING_RECV, port, 128, "0", FD_LIMIT)
    server = runner.run(server_image, service)
    listening = servers.wait_ready(server, service, "127.0.0.1", port, timeout=30)
    assert listening and listening["backend"] == catalog.URING_RECV, server.output_tail()
    http_get(port, 128)
    # From inside the container: its processes' pids are not this one's in a clean room.
    code, status = server.container.exec_run(["cat", "/proc/1/status"])
    assert code == 0 and re.search(r"^Seccomp:\s+2$", status.decode(), re.M), "a seccomp filter, not none"
    assert runner.stop(server, timeout=30) == 0, server.output_tail()
    stats = json.loads(server.log[-1])
    assert stats["responses_200"] == 3 and stats["submissions"] > 0


@pytest.mark.docker
def test_a_profile_without_the_io_uring_calls_makes_io_uring_recv_exit_2_naming_seccomp(client, server_image):
    """The filter given is the one in force: take the io_uring calls out of it and io_uring-recv is refused."""
    profile = json.loads(seccomp.profile_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in seccomp.IO_URING_SYSCALLS]
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run(server_image, ["ephttpd", "--backend", catalog.URING_RECV, "--port", "0"],
                              network_mode="host", remove=True, security_opt=[f"seccomp={json.dumps(profile)}"],
                              labels={"org.epollbench.role": "test-seccomp"})
    assert failed.value.exit_status == 2
    said = failed.value.stderr.decode() if failed.value.stderr else ""
    assert f"ephttpd: {catalog.URING_RECV}: io_uring_setup: Operation not permitted" in said
    assert "seccomp" in said


@pytest.mark.docker
def test_a_server_of_ones_own_is_ready_by_tcp_with_its_placeholders_filled(runner, server_image):
    port, msgsize = machine.free_port(), 77
    (choice,) = servers.choose(image=server_image, command="pyhttpd --bind {bind} --port {port} --msgsize {msgsize}",
                            port=port)
    service = choice.service("own", choice.port, msgsize, "0", FD_LIMIT)
    server = runner.run(service.image, service)
    assert servers.wait_ready(server, service, "127.0.0.1", port, timeout=30) == {
        "event": "listening", "bind": "127.0.0.1", "port": port, "readiness": "tcp"}
    http_get(port, msgsize)
    assert runner.stop(server, timeout=30) == 0


@pytest.mark.docker
def test_a_server_that_exits_is_not_taken_for_ready(runner, server_image):
    port = machine.free_port()
    (choice,) = servers.choose(image=server_image, command="sh -c 'echo cannot start >&2; exit 3'", port=port)
    service = choice.service("own", port, 128, "0", FD_LIMIT)
    server = runner.run(service.image, service)
    assert servers.wait_ready(server, service, "127.0.0.1", port, timeout=30) is None
    assert "cannot start" in server.output_tail()
