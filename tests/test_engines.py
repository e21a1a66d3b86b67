"""Server and clients on two Docker engines: a second dockerd here (tests/engines.py), the images copied to it
with experiment.engine.copy_images, and its host-network containers reaching a server the first engine runs
over 127.0.0.1."""

from __future__ import annotations

import resource
import time
import uuid

import pytest

from experiment.host import engine, images, machine
from experiment.run import loads, servers, services
from experiment.run.containers import Containers

pytestmark = pytest.mark.docker

FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.fixture(scope="module")
def built(client, tmp_path_factory):
    return images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def copied(client, second_engine, built):
    refs = [built["server"].tag, built["client"].tag]
    return refs, engine.copy_images(client, second_engine.client, refs)



def test_the_second_engine_is_another_dockerd_without_a_bridge(client, second_engine):
    first, second = client.info(), second_engine.client.info()
    assert first["DockerRootDir"] != second["DockerRootDir"] == str(second_engine.root / "data")
    assert {n.name for n in second_engine.client.networks.list()} == {"host", "none"}


def test_images_are_copied_once_and_keep_their_ids(client, second_engine, copied):
    refs, first_copy = copied
    assert first_copy == dict.fromkeys(refs, "copied")
    for ref in refs:
        assert second_engine.client.images.get(ref).id == client.images.get(ref).id
    assert engine.copy_images(client, second_engine.client, refs) == dict.fromkeys(refs, "present")


def test_copying_an_image_the_source_lacks_names_it(client, second_engine):
    missing = f"epollbench-test/missing:{uuid.uuid4().hex[:8]}"
    with pytest.raises(engine.UserError, match=f"no image {missing}"):
        engine.copy_images(client, second_engine.client, [missing])


def test_clients_on_the_second_engine_load_a_server_on_the_first_over_loopback(client, second_engine,
                                                                                copied, built):
    run_id = f"test-engines-{uuid.uuid4().hex[:8]}"
    server_side = Containers(client, run_id, FD_LIMIT)
    client_side = Containers(second_engine.client, run_id, FD_LIMIT)
    port, dead, calls, conns = machine.free_port(), 100, 20, 10
    try:
        service = servers.choose("python")[0].service("epoll", port, 128, "0", FD_LIMIT)
        server = server_side.run(built["server"].tag, service)
        assert servers.wait_ready(server, service, "127.0.0.1", port, timeout=30), server.output_tail()

        holder = client_side.run(built["client"].tag, services.deadconn(port, dead, 60, "0"))
        ready = holder.next_json(("ready", "failed"), 90)
        assert ready and ready["event"] == "ready" and ready["held"] == dead, holder.output_tail()

        load = loads.ActiveLoad(port=port, connections=conns, rate=100, num_calls=calls)
        load_generator = client_side.run(built["client"].tag, services.active_load(load, "0"))
        assert client_side.finish(load_generator, timeout=120) == 0, load_generator.output_tail()
        time.sleep(0.1)  # the log reader's last lines
        parsed = loads.parse("\n".join(load_generator.log))
        assert parsed["total"]["replies"] == conns * calls
        assert parsed["errors"]["total"] == 0

        server.container.kill(signal="SIGUSR1")
        snapshot = server.next_json(("snapshot",), 10)
        assert snapshot["open"] >= dead and snapshot["responses_200"] == conns * calls
        holder.send_stdin("quit\n")
        assert client_side.finish(holder, timeout=60) == 0
        assert server_side.stop(server, timeout=30) == 0
    finally:
        client_side.remove_all()
        server_side.remove_all()
