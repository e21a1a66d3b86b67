"""What the test suite needs on the host, installed (as root on Debian) before pytest runs."""

from __future__ import annotations

from pathlib import Path

from experiment.host import engine, machine

# Native build of images/, the real httperf and wrk, a real browser for the report, a registry to publish to,
# nginx run natively, strace's fault injection, the loopback notrack rules (iptables, nft), git for the
# checkout's state, perf for the kernel cost anatomy (experiment/anatomy, which also installs it itself),
# openssl for a TLS engine's certificates, ctags for the C functions the structure tests read.
# Every tool tests/tools.py knows comes from here (tests/test_testenv.py checks it), so that a fresh machine
# skips nothing for a missing package.
TEST_PACKAGES = ["gcc", "make", "libc6-dev", "liburing-dev", "httperf", "wrk", "chromium", "procps", "docker-compose",
                 "docker-registry", "nginx-light", "strace", "iptables", "nftables", "git", "linux-perf",
                 "openssl", "universal-ctags"]


def prepare(docker: bool = True) -> None:
    machine.ensure_packages(TEST_PACKAGES, "the test suite")
    if docker:
        engine.connect(log_dir=Path("results/.engine-logs"))
