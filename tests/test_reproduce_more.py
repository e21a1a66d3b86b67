"""`invoke reproduce` beyond one server, one load generator and one engine: nginx, pyhttpd and a server of
one's own under test, wrk as the load, and the server and the clients on two Docker engines. Each is a small
real sweep (UP, 0 and 1000 dead connections, 1 s points; 2 s where the test reads the load's length) in real
containers."""

from __future__ import annotations

import calendar
import resource
import shlex
import time

import pytest
from reproducing import finished, invoke, labelled_containers, point_files

from experiment.catalog import Series
from experiment.host import engine, machine
from experiment.report.data import load
from experiment.report.plots import run_figure_rows
from experiment.report.render import render
from experiment.run import dead, servers, services, steps
from experiment.run.containers import LABEL_ROLE, LABEL_RUN
from experiment.run.results import Run

SMOKE = ["--variants", "up", "--sweeps", "dead", "--dead", "0,1000", "--no-report"]
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def smoke(results_dir, *args: str, duration: str = "1") -> Run:
    code, out, err = finished(invoke(*SMOKE, "--duration", duration, *args, results_dir=results_dir), timeout=600)
    assert code == 0, f"{out}\n{err}"
    return Run.open(None, results_dir)


def dead_points(run: Run) -> dict[tuple[str, int], dict]:
    points = {(Series(p["server_kind"], p["backend"]).label, p["x"]): p for p in point_files(run)}
    for p in points.values():
        assert p["status"] == "ok", (p["id"], p["reason"])
        assert p["figures"]["replies"] > 0 and p["figures"]["reply_rate"] > 0
        assert p["figures"]["server_cpu_s"] > 0 and p["figures"]["server_cpu_us_per_reply"] > 0
        assert p["deadconn"]["held"] == p["x"]
    return points


def assert_held(point: dict) -> None:
    """The server's own count of open connections: the dead ones and the load's."""
    assert point["server"]["stats_after"]["open"] >= point["x"]



# ------------------------------------------------------------------------------------ without containers



def test_cpusets_of_two_hosts_give_the_clients_all_of_theirs():
    assert steps.cpusets([0, 1]) == {"up": {"server": "0", "clients": "1"},
                                     "smp": {"server": "0,1", "clients": "0,1"}}
    assert steps.cpusets([0, 1], [0, 1, 2, 3], same_host=False) == {
        "up": {"server": "0", "clients": "0,1,2,3"}, "smp": {"server": "0,1", "clients": "0,1,2,3"}}
    assert engine.expand_cpu_list("0-2,5") == [0, 1, 2, 5]


def test_the_wrk_service_reports_wrks_exit_code_and_cpu_time_after_it():
    service = services.wrk("http://127.0.0.1:8080/", 100, 2, "1")
    assert service.command[:2] == ("sh", "-c")
    assert service.command[2].startswith("wrk --threads 1 --connections 100 --duration 2s --timeout 5s "
                                         "http://127.0.0.1:8080/;")
    assert dead._wrk_status(f"Requests/sec: 5\n{services.WRK_CPU_MARK} 150 50 0\n", 0) == (0, 2.0)
    assert dead._wrk_status("no such line\n", 7) == (7, None)


def test_deadconn_connects_from_one_given_address_to_a_server_beyond_loopback():
    command = services.deadconn(80, 0, 60, "1", host="192.0.2.10", source="192.0.2.20").command
    assert command[command.index("--host") + 1] == "192.0.2.10"
    assert command[command.index("--source-base") + 1:command.index("--sources") + 2] == ("192.0.2.20",
                                                                                           "--sources", "1")
    assert "--source-base" not in services.deadconn(80, 0, 60, "1").command


# ------------------------------------------------------------------------------------------- real sweeps


@pytest.mark.docker
def test_server_and_clients_on_two_engines(tmp_path, client, second_engine):
    # The server listens on an address of its own, which the clients of the other engine target.
    address = "127.0.0.9"
    run = smoke(tmp_path, "--backends", "epoll", "--server-engine", engine.DEFAULT_SOCKET,
                "--client-engine", second_engine.url, "--server-address", address)
    record = run.record().to_json()
    assert record["engines"] == {"server": engine.DEFAULT_SOCKET, "client": second_engine.url,
                                 "server_address": address}
    engines = record["metadata"]["engines"]
    assert engines["server"]["url"] == engine.DEFAULT_SOCKET and engines["client"]["url"] == second_engine.url
    assert engines["server"]["docker_root_dir"] != engines["client"]["docker_root_dir"]
    assert engines["server"]["boot_id"] == engines["client"]["boot_id"], "two engines of one host"
    client_id = record["metadata"]["image_ids"]["client"]
    assert second_engine.client.images.get(client_id).id == client_id
    copied = record["metadata"]["images_source"]["copied_to_client_engine"]
    assert len(copied) == 1 and set(copied.values()) <= {"copied", "present"}
    assert client.images.get(next(iter(copied))).id == client_id, "the client image, and only it"
    points = dead_points(run)
    assert sorted(points) == [("epoll", 0), ("epoll", 1000)]
    for p in points.values():
        assert_held(p)
        assert p["server"]["ready"]["bind"] == p["server"]["address"] == address
        assert p["httperf"]["command"][p["httperf"]["command"].index("--server") + 1] == address
        assert p["deadconn"]["command"][p["deadconn"]["command"].index("--host") + 1] == address
    assert labelled_containers(client, run.id) == labelled_containers(second_engine.client, run.id) == []
    assert created_roles(client, run) == {"server"}
    assert created_roles(second_engine.client, run) == {"deadconn", "httperf"}


def created_roles(docker_client, run: Run) -> set[str]:
    """The roles of the run's containers an engine created, from its event log."""
    started = calendar.timegm(time.strptime(run.record().started_at, "%Y-%m-%dT%H:%M:%SZ"))
    events = docker_client.events(since=started - 5, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "create", "label": f"{LABEL_RUN}={run.id}"})
    return {event["Actor"]["Attributes"][LABEL_ROLE] for event in events}


@pytest.mark.docker
def test_three_servers_answer_one_sweep_and_share_its_figures(tmp_path):
    run = smoke(tmp_path, "--server", "ephttpd,nginx,python", "--backends", "epoll,asyncio")
    points = dead_points(run)
    labels = ["epoll", "nginx/epoll", "python/epoll", "python/asyncio"]
    assert sorted(points) == sorted((label, x) for label in labels for x in (0, 1000))
    for (label, _x), p in points.items():
        assert p["id"].startswith(f"dead-up-{label.replace('/', '-')}-r1-d")
        assert Series(p["server_kind"], p["backend"]).label == label and p["load"] == "httperf"
        assert p["server"]["kind"] == p["server_kind"]
        if p["server_kind"] == "nginx":
            assert p["server"]["readiness"] == "tcp" and p["server"]["stats_after"] is None
            assert "exec nginx -c" in p["server"]["command"][-1]
            continue
        program = {"ephttpd": ["ephttpd", "--backend"], "python": ["pyhttpd", "--backend"]}[p["server_kind"]]
        assert p["server"]["command"][:3] == [*program, p["backend"]]
        assert_held(p)
        served = p["server"]["stats_after"]["responses_200"] - p["server"]["stats_before"]["responses_200"]
        assert served == p["figures"]["replies"], "httperf's replies are the server's responses"
    under_test = run.record().metadata["servers_under_test"]
    assert sorted(under_test) == ["ephttpd", "nginx", "python"]
    assert {u["readiness"] for u in under_test.values()} == {"json", "tcp"}
    data = load(run)
    assert [s.label for s in data.planned_lines("dead")] == labels
    for row in run_figure_rows(data):
        for figure in row.plots:
            drawn = [s.label for s in figure.series if not s.reference]
            assert drawn == labels, (figure.name, drawn)
    page = render(run).read_text()
    for label in labels:
        assert f">{label}<" in page


@pytest.mark.docker
def test_a_server_of_ones_own_runs_with_the_same_load(tmp_path, client):
    port = machine.free_port()
    command = shlex.join(["sh", "-c", servers.nginx_script(servers.nginx_conf(port, 128, FD_LIMIT))])
    run = smoke(tmp_path, "--server-image", "epollbench/server:latest", "--server-cmd", command,
                "--server-port", str(port))
    points = dead_points(run)
    assert sorted(points) == [("custom/own", 0), ("custom/own", 1000)]
    under_test = run.record().metadata["servers_under_test"]["custom"]
    assert under_test["image"] == "epollbench/server:latest" and under_test["port"] == port
    assert under_test["image_id"] == client.images.get("epollbench/server:latest").id
    for p in points.values():
        assert p["id"].startswith("dead-up-custom-own-r1-d")
        assert p["server"]["port"] == port and p["server"]["image"] == "epollbench/server:latest"
        assert p["httperf"]["command"][p["httperf"]["command"].index("--port") + 1] == str(port)


@pytest.mark.docker
def test_wrk_measures_the_points_and_says_so(tmp_path):
    run = smoke(tmp_path, "--backends", "epoll", "--load", "wrk", duration="2")
    version = run.record().metadata["wrk_version"]  # e.g. "wrk debian/4.1.0-3+b2 [epoll] Copyright ..."
    assert version.startswith("wrk ") and "[epoll]" in version
    points = dead_points(run)
    assert sorted(points) == [("epoll", 0), ("epoll", 1000)]
    for p in points.values():
        assert p["load"] == "wrk" and "httperf" not in p
        parsed, figures_ = p["wrk"]["parsed"], p["figures"]
        assert p["wrk"]["exit_code"] == 0
        assert figures_["reply_rate_source"] == "wrk"
        assert figures_["replies"] == parsed["requests"] and figures_["reply_rate"] == parsed["requests_per_s"]
        assert parsed["connections"] == 100 and parsed["threads"] == 1
        assert 0 < figures_["client_cpu_pct"] <= 100 * 1.05
        assert {"client_saturated", "server_saturated"} <= set(p["flags"])
        assert (run.path / p["wrk"]["raw"]).read_text().startswith("Running 2s test @ http://127.0.0.1:")
        assert_held(p)
        served = p["server"]["stats_after"]["responses_200"] - p["server"]["stats_before"]["responses_200"]
        assert served >= figures_["replies"], "wrk counts the replies that arrived before it stopped"


@pytest.mark.docker
def test_the_open_loop_offers_one_rate_and_records_its_percentiles_and_flags(tmp_path):
    run = smoke(tmp_path, "--backends", "epoll", "--load", "open", duration="2")
    record = run.record()
    rate = record.open_rate
    assert (rate["requested"], rate["share"], rate["lowest"], rate["probe"]["load"]) == \
        ("0.5x", 0.5, "up/epoll", "wrk")
    capacity = rate["capacity"]["up/epoll"]
    assert capacity > 0 and rate["rate"] == pytest.approx(capacity / 2, abs=0.1)
    assert record.metadata["wrk_version"].startswith("wrk ")
    assert record.plan.sweeps == ("dead-open",) and record.limits["max_dead_open"]["epoll"] > 1000
    points = {p["x"]: p for p in point_files(run)}
    assert sorted(points) == [0, 1000]
    for p in points.values():
        assert (p["status"], p["sweep"], p["load"]) == ("ok", "dead-open", "open"), p["reason"]
        assert p["id"] == f"dead-open-up-epoll-r1-d{p['x']:06d}" and "httperf" not in p and "wrk" not in p
        f, parsed = p["figures"], p["openload"]["parsed"]
        assert p["openload"]["exit_code"] == 0 and f["offered_rate"] == rate["rate"] == parsed["offered_rate"]
        assert 0 < f["latency_p50_ms"] <= f["latency_p90_ms"] <= f["latency_p99_ms"] <= f["latency_p999_ms"] \
            <= f["latency_max_ms"]
        assert f["latency_p99_ms"] == parsed["latency_ms"]["p99"]
        assert f["latency_p999_ms"] == parsed["latency_ms"]["p99.9"]
        # A request is sent at or after it is due: each uncorrected percentile is at most the corrected one
        # (within the histogram's 3 significant digits).
        assert f["uncorrected_p99_ms"] <= f["latency_p99_ms"] * 1.001
        assert f["replies"] == parsed["replies"] > 0 and f["requests"] == parsed["requests"]
        assert f["connections"] == 100 and f["duration_s"] == 2
        assert (p["flags"]["lagged"], p["flags"]["overloaded"]) == (f["lagged"], f["overloaded"]) == \
            (parsed["lagged"], parsed["overloaded"])
        assert (p["flags"]["lagged_p99"], p["flags"]["lagged_p999"]) == (f["lagged_p99"], f["lagged_p999"]) == \
            (parsed["lagged_p99"], parsed["lagged_p999"])
        assert f["overloaded"] == (f["achieved_share"] < 0.99)
        assert f["server_cpu_s"] > 0 and 0 < f["server_cpu_busy_pct"] <= 105
        assert f["server_cpu_us_per_reply"] == pytest.approx(f["server_cpu_s"] * 1e6 / f["replies"])
        assert 0 < f["client_cpu_pct"] <= 105
        assert (run.path / p["openload"]["raw"]).read_text().startswith('{"program":"openload"')
        assert p["deadconn"]["held"] == p["x"]
        assert_held(p)
        served = p["server"]["stats_after"]["responses_200"] - p["server"]["stats_before"]["responses_200"]
        assert served >= f["replies"], "openload counts the replies that arrived"
