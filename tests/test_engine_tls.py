"""An engine over TCP with TLS, reached as the Docker CLI reaches it (DOCKER_HOST, DOCKER_TLS_VERIFY,
DOCKER_CERT_PATH): a second dockerd on this machine (tests/engines.py) serving TLS on 127.0.0.1, with a CA,
a server and a client certificate made here with openssl, torn down at the end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import engines
import pytest
import tools
from conftest import SECOND_DOCKERD

from experiment.errors import UserError
from experiment.host import engine, machine

pytestmark = [pytest.mark.docker, pytest.mark.needs_host(SECOND_DOCKERD, tools=["dockerd", "openssl"])]
ENV = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([tools.require("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path) -> None:
    folder.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem",
            "-days", "1", "-subj", f"/CN=epollbench test CA {folder.name}", cwd=folder)


def make_cert(ca: Path, folder: Path, name: str, extensions: str) -> None:
    """folder/{name}.pem and {name}-key.pem, signed by the CA in ca."""
    (folder / f"{name}.ext").write_text(extensions + "\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca / "ca.pem"), "-CAkey", str(ca / "ca-key.pem"),
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)


def client_certs(ca: Path, folder: Path) -> Path:
    """A DOCKER_CERT_PATH: ca.pem, cert.pem and key.pem of a client certificate signed by ca."""
    folder.mkdir()
    make_cert(ca, folder, "client", "extendedKeyUsage = clientAuth")
    (folder / "cert.pem").write_bytes((folder / "client.pem").read_bytes())
    (folder / "key.pem").write_bytes((folder / "client-key.pem").read_bytes())
    (folder / "ca.pem").write_bytes((ca / "ca.pem").read_bytes())
    return folder


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory):
    """(the second engine, its tcp:// URL, a DOCKER_CERT_PATH for it)."""
    certs = tmp_path_factory.mktemp("tls")
    make_ca(certs / "ca")
    make_cert(certs / "ca", certs / "ca", "server", "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth")
    cert_path = client_certs(certs / "ca", certs / "client")
    url = f"tcp://127.0.0.1:{machine.free_port()}"
    try:
        second = engines.start(("--host", url, "--tlsverify", "--tlscacert", str(certs / "ca/ca.pem"), "--tlscert",
                                str(certs / "ca/server.pem"), "--tlskey", str(certs / "ca/server-key.pem")))
    except RuntimeError as error:
        pytest.skip(f"a second dockerd serving TLS cannot be started here: {error}")
    try:
        yield second, url, cert_path
    finally:
        engines.stop(second)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_docker_host_with_tls_verify_reaches_the_engine_as_the_cli_does(tls_engine, clean_env, tmp_path):
    """Also where REQUESTS_CA_BUNDLE names other CAs (the development machine's names the system's), which
    requests would otherwise check the engine's certificate against instead of DOCKER_CERT_PATH's ca.pem."""
    second, url, cert_path = tls_engine
    make_ca(tmp_path / "other-ca")
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "other-ca/ca.pem"))
    clean_env.setenv("DOCKER_HOST", url)
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    clean_env.setenv("DOCKER_CERT_PATH", str(cert_path))
    client = engine.connect()
    info = client.info()
    assert info["DockerRootDir"] == str(second.root / "data")
    assert client.api.base_url == url.replace("tcp://", "https://")
    cli = subprocess.run([tools.require("docker"), "info", "--format", "{{.ID}}"], capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == info["ID"], cli.stderr


def test_a_given_tcp_url_takes_the_tls_settings_from_the_environment(tls_engine, clean_env):
    second, url, cert_path = tls_engine
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    clean_env.setenv("DOCKER_CERT_PATH", str(cert_path))
    assert engine.connect(url).info()["DockerRootDir"] == str(second.root / "data")


def test_without_tls_settings_the_engine_is_named_with_the_fix(tls_engine, clean_env):
    _second, url, _cert_path = tls_engine
    with pytest.raises(UserError, match=f"no Docker engine answers at {url}: .*DOCKER_TLS_VERIFY=1 and "
                                        "DOCKER_CERT_PATH"):
        engine.connect(url)


def test_a_server_certificate_from_another_ca_is_refused(tls_engine, clean_env, tmp_path):
    _second, url, _cert_path = tls_engine
    make_ca(tmp_path / "other-ca")
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    clean_env.setenv("DOCKER_CERT_PATH", str(client_certs(tmp_path / "other-ca", tmp_path / "other")))
    with pytest.raises(UserError, match=r"over TLS \(DOCKER_TLS_VERIFY/DOCKER_CERT_PATH\)"):
        engine.connect(url)


def test_missing_certificate_files_are_named(tls_engine, clean_env, tmp_path):
    _second, url, _cert_path = tls_engine
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    clean_env.setenv("DOCKER_CERT_PATH", str(tmp_path))
    with pytest.raises(UserError, match=f"put ca.pem, cert.pem and key.pem in {tmp_path}"):
        engine.connect(url)

