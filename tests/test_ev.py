"""The event library images/ev, driven through ctypes: each backend keeps the promises of ev.h, also when the
library is built under AddressSanitizer and UBSan (the last test)."""

import contextlib
import ctypes
import errno
import os
import resource
import signal
import socket
import subprocess
import sys

import pytest

from experiment.bench import native
from experiment.paths import ROOT

BACKENDS = ["select", "poll", "epoll", "epoll-et", "io_uring", "aio-poll"]
LEVEL_TRIGGERED = [b for b in BACKENDS if b != "epoll-et"]
EV_READ, EV_WRITE, EV_ERROR = 1, 2, 4
NOTHING_MS = 50  # how long a wait that must report nothing is given to (wrongly) report something
# Set in the run of this file that test_every_other_test_here_passes_under_asan_and_ubsan starts.
UNDER_ASAN = os.environ.get("EPOLLBENCH_EV_UNDER_ASAN") == "1"
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


EV_FOREIGN = -1
SHAREABLE = ["epoll", "epoll-et"]


class Event(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_uint), ("data", ctypes.c_uint64)]


@pytest.fixture(scope="session")
def libev(tmp_path_factory):
    """images/ev compiled as a shared library, warnings as errors; under the sanitizers when UNDER_ASAN."""
    ev = native.IMAGES / "ev"
    lib = tmp_path_factory.mktemp("ev") / "libev.so"
    compiler_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run(["cc", "-shared", "-fPIC", *(SANITIZE if UNDER_ASAN else ["-O2"]), "-Wall", "-Wextra", "-Werror",
                    "-std=gnu11", "-o", str(lib), *map(str, sorted(ev.glob("*.c"))), "-luring"],
                   check=True, env=compiler_env)
    dll = ctypes.CDLL(str(lib))
    dll.ev_create.restype = ctypes.c_void_p
    dll.ev_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    for name in ("ev_add", "ev_modify"):
        getattr(dll, name).argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
    dll.ev_delete.argtypes = [ctypes.c_void_p, ctypes.c_int]
    dll.ev_wait.argtypes = [ctypes.c_void_p, ctypes.POINTER(Event), ctypes.c_int, ctypes.c_int]
    dll.ev_name.restype = ctypes.c_char_p
    dll.ev_name.argtypes = [ctypes.c_void_p]
    dll.ev_destroy.argtypes = [ctypes.c_void_p]
    for name in ("ev_add_foreign", "ev_rearm_foreign"):
        getattr(dll, name).argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint64]
    dll.ev_shareable.argtypes = [ctypes.c_void_p]
    dll.ev_watched.restype = ctypes.c_long
    dll.ev_watched.argtypes = [ctypes.c_void_p]
    return dll


class Loop:
    def __init__(self, lib, backend, max_fds=4096):
        self.lib = lib
        err = ctypes.create_string_buffer(256)
        self.loop = lib.ev_create(backend.encode(), max_fds, err, len(err))
        if not self.loop:
            if backend in ("io_uring", "aio-poll") and err.value.startswith(f"{backend}:".encode()):
                pytest.skip(err.value.decode())
            raise AssertionError(err.value.decode())

    def add(self, fd, events=EV_READ):
        return self.lib.ev_add(self.loop, fd, events)

    def modify(self, fd, events):
        return self.lib.ev_modify(self.loop, fd, events)

    def delete(self, fd):
        return self.lib.ev_delete(self.loop, fd)

    def wait(self, max_events=64, timeout_ms=1000):
        """{fd: events} of one wait; the loop's own descriptors carry data 0."""
        return {fd: events for fd, events, _ in self.wait_events(max_events, timeout_ms)}

    def wait_events(self, max_events=64, timeout_ms=1000):
        """[(fd, events, data)] of one wait."""
        out = (Event * max_events)()
        # -EINTR is allowed (ev.h), and happens without a signal: io_uring's teardown of an earlier
        # test's ring queues task work on this thread, which interrupts a sleeping io_getevents.
        for _ in range(3):
            n = self.lib.ev_wait(self.loop, out, max_events, timeout_ms)
            if n != -errno.EINTR:
                break
        assert n >= 0, os.strerror(-n)
        got = [(out[i].fd, out[i].events, out[i].data) for i in range(n)]
        own = [fd for fd, _, _ in got if fd != EV_FOREIGN]
        assert len(set(own)) == len(own), "a descriptor reported twice in one wait"
        assert all(data == 0 for fd, _, data in got if fd != EV_FOREIGN), got
        return got

    def close(self):
        self.lib.ev_destroy(self.loop)


@pytest.fixture(params=BACKENDS)
def loop(request, libev):
    loop = Loop(libev, request.param)
    loop.backend = request.param
    yield loop
    loop.close()


@pytest.fixture
def pipe():
    r, w = os.pipe2(os.O_NONBLOCK)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_name_and_unknown_backend(libev):
    for backend in BACKENDS:
        loop = Loop(libev, backend)
        assert libev.ev_name(loop.loop).decode() == backend
        loop.close()
    err = ctypes.create_string_buffer(256)
    assert not libev.ev_create(b"kqueue", 64, err, len(err))
    assert err.value.decode() == "unknown backend 'kqueue' (choose select|poll|epoll|epoll-et|io_uring|aio-poll)"


def test_readable_pipe_is_reported_and_idle_one_is_not(loop, pipe):
    r, w = pipe
    assert loop.add(r) == 0
    assert loop.wait(timeout_ms=NOTHING_MS) == {}
    os.write(w, b"x")
    assert loop.wait(timeout_ms=-1) == {r: EV_READ}


def test_delivery_is_level_triggered_except_epoll_et(loop, pipe):
    r, w = pipe
    loop.add(r)
    os.write(w, b"x")
    assert loop.wait() == {r: EV_READ}
    again = loop.wait(timeout_ms=NOTHING_MS)
    assert again == ({} if loop.backend == "epoll-et" else {r: EV_READ})
    os.write(w, b"y")  # a new edge
    assert loop.wait() == {r: EV_READ}


def test_hang_up_is_reported_with_read(loop, pipe):
    r, w = pipe
    loop.add(r)
    os.close(w)
    # select has no hang-up bit: it sees only a readable end of file.
    assert loop.wait() == {r: EV_READ if loop.backend == "select" else EV_READ | EV_ERROR}


def test_deleted_descriptor_is_never_reported(loop, pipe):
    r, w = pipe
    loop.add(r)
    assert loop.wait(timeout_ms=0) == {}  # armed, for the backends that arm in-kernel requests
    assert loop.delete(r) == 0
    os.write(w, b"x")
    assert loop.wait(timeout_ms=NOTHING_MS) == {}


def test_delete_after_delivery_then_add_again_reports_once(loop, pipe):
    """The io_uring and AIO backends' cancelled and completed requests must not leak out as events."""
    r, w = pipe
    loop.add(r)
    os.write(w, b"x")
    assert loop.wait() == {r: EV_READ}
    assert loop.wait() in ({r: EV_READ}, {})  # re-armed (level) or not (edge)
    assert loop.delete(r) == 0
    assert loop.add(r) == 0
    assert loop.wait() == {r: EV_READ}
    os.read(r, 16)
    assert loop.wait(timeout_ms=NOTHING_MS) == {}


def test_closed_and_reused_descriptor_number(loop, pipe):
    r, w = pipe
    loop.add(r)
    assert loop.wait(timeout_ms=0) == {}
    loop.delete(r)
    os.close(r)
    r2, w2 = os.pipe2(os.O_NONBLOCK)
    assert r2 == r  # the pipe fixture closes it
    with open(w2, "wb", buffering=0) as writer:
        loop.add(r2)
        assert loop.wait(timeout_ms=NOTHING_MS) == {}
        writer.write(b"x")
        assert loop.wait() == {r2: EV_READ}


def test_modify_switches_interest(loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert loop.add(a.fileno(), EV_READ) == 0
        assert loop.wait(timeout_ms=NOTHING_MS) == {}
        assert loop.modify(a.fileno(), EV_WRITE) == 0
        assert loop.wait() == {a.fileno(): EV_WRITE}
        b.send(b"x")
        assert loop.modify(a.fileno(), EV_READ | EV_WRITE) == 0
        assert loop.wait() == {a.fileno(): EV_READ | EV_WRITE}


def test_registration_errors(loop, pipe):
    r, _ = pipe
    assert loop.delete(r) == -errno.ENOENT
    assert loop.modify(r, EV_READ) == -errno.ENOENT
    assert loop.add(r) == 0
    assert loop.add(r) == -errno.EEXIST


def test_a_full_out_array_starves_no_descriptor(loop):
    """Five ready pipes, waits of at most two events: every pipe is reported within three waits."""
    pipes = [os.pipe2(os.O_NONBLOCK) for _ in range(5)]
    try:
        for r, w in pipes:
            loop.add(r)
            os.write(w, b"x")
        seen = {}
        for _ in range(3):
            got = loop.wait(max_events=2)
            assert 1 <= len(got) <= 2
            seen.update(got)
        assert seen == {r: EV_READ for r, _ in pipes}
    finally:
        for fds in pipes:
            for fd in fds:
                os.close(fd)


def test_select_refuses_descriptors_from_fd_setsize(libev, pipe):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1100:
        pytest.skip(f"descriptor limit {hard} is below FD_SETSIZE")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    high = os.dup2(pipe[0], 1090)
    loop = Loop(libev, "select", max_fds=2048)
    try:
        assert loop.add(high) == -errno.ERANGE
        assert loop.add(pipe[0]) == 0
    finally:
        loop.close()
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("backend", ["poll", "io_uring", "aio-poll"])
def test_descriptors_from_max_fds_on_are_refused(libev, backend, pipe):
    loop = Loop(libev, backend, max_fds=pipe[0])
    try:
        assert loop.add(pipe[0]) == -errno.ERANGE
    finally:
        loop.close()


class ForeignOwner:
    """A child forked after the loop was created: it holds one end of a socketpair (the parent closes it) and
    registers it in the shared loop as a foreign item. The parent talks to the other end, and commands the child
    over a pipe: each command byte is answered with the return value of what it did."""

    def __init__(self, loop, data):
        self.loop = loop
        self.mine, self.peer = socket.socketpair()
        self.fd = self.mine.fileno()  # the child's number for it
        commands_r, self.commands = os.pipe()
        self.answers, answers_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            status = 1
            try:
                self.peer.close()
                os.close(self.commands)
                os.close(self.answers)
                fd = self.mine.fileno()
                lib = loop.lib
                actions = {b"a": lambda: lib.ev_add_foreign(loop.loop, fd, EV_READ, data),
                           b"r": lambda: lib.ev_rearm_foreign(loop.loop, fd, EV_READ, data),
                           b"d": lambda: loop.delete(fd),
                           b"c": lambda: self.mine.close() or 0}
                while (command := os.read(commands_r, 1)) in actions:
                    os.write(answers_w, actions[command]().to_bytes(4, "little", signed=True))
                status = 0
            finally:
                os._exit(status)
        os.close(commands_r)
        os.close(answers_w)
        self.mine.close()

    def do(self, command: bytes) -> int:
        os.write(self.commands, command)
        return int.from_bytes(os.read(self.answers, 4), "little", signed=True)

    def end(self, sig=None):
        """The child exits (q), or is killed with sig; returns its wait status."""
        if sig is None:
            os.write(self.commands, b"q")
        else:
            os.kill(self.pid, sig)
        status = os.waitpid(self.pid, 0)[1]
        for fd in (self.commands, self.answers):
            os.close(fd)
        self.peer.close()
        return status


@pytest.fixture(params=SHAREABLE)
def shared(request, libev):
    loop = Loop(libev, request.param)
    loop.backend = request.param
    yield loop
    loop.close()


def test_a_childs_foreign_item_is_reported_once_to_the_waiter_with_its_data(shared):
    data = (5 << 32) | 123
    owner = ForeignOwner(shared, data)
    try:
        assert owner.do(b"a") == 0
        assert shared.lib.ev_watched(shared.loop) == 1
        assert shared.wait_events(timeout_ms=NOTHING_MS) == []
        owner.peer.send(b"x")
        assert shared.wait_events() == [(EV_FOREIGN, EV_READ, data)]
        # One-shot: not again, though the byte is still unread and "epoll" is level-triggered...
        owner.peer.send(b"y")
        assert shared.wait_events(timeout_ms=NOTHING_MS) == []
        # ... until the owner re-arms it.
        assert owner.do(b"r") == 0
        assert shared.wait_events() == [(EV_FOREIGN, EV_READ, data)]
        assert owner.do(b"r") == 0
        owner.peer.close()
        assert shared.wait_events() == [(EV_FOREIGN, EV_READ | EV_ERROR, data)]
        assert owner.do(b"d") == 0
        assert shared.lib.ev_watched(shared.loop) == 0
        assert owner.do(b"c") == 0
    finally:
        assert owner.end() == 0


def test_foreign_and_own_items_with_one_descriptor_number_are_apart(shared, pipe):
    """An item is (file, number in its owner): the child's socket has a number that the parent, having closed
    its copy, gives to a pipe of its own, and both are watched and reported apart."""
    owner = ForeignOwner(shared, 7)
    r, w = pipe
    try:
        assert owner.do(b"a") == 0
        same = os.dup2(r, owner.fd)
        assert shared.add(same) == 0
        assert shared.lib.ev_watched(shared.loop) == 2
        os.write(w, b"x")
        owner.peer.send(b"x")
        assert sorted(shared.wait_events()) == sorted([(same, EV_READ, 0), (EV_FOREIGN, EV_READ, 7)])
        assert shared.delete(same) == 0
        os.close(same)
    finally:
        assert owner.end() == 0


def test_a_dead_owner_takes_its_items_out_of_the_set(shared):
    owner = ForeignOwner(shared, 1)
    assert owner.do(b"a") == 0
    assert shared.lib.ev_watched(shared.loop) == 1
    owner.end(signal.SIGKILL)
    assert shared.lib.ev_watched(shared.loop) == 0
    assert shared.wait_events(timeout_ms=NOTHING_MS) == []


def test_foreign_data_with_the_top_bit_is_refused(shared, pipe):
    assert shared.lib.ev_add_foreign(shared.loop, pipe[0], EV_READ, 1 << 63) == -errno.EINVAL
    assert shared.lib.ev_shareable(shared.loop) == 1


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in SHAREABLE])
def test_backends_without_a_shareable_set_refuse_foreign_items(libev, backend, pipe):
    loop = Loop(libev, backend)
    try:
        assert libev.ev_shareable(loop.loop) == 0
        assert libev.ev_add_foreign(loop.loop, pipe[0], EV_READ, 1) == -errno.EOPNOTSUPP
        assert libev.ev_rearm_foreign(loop.loop, pipe[0], EV_READ, 1) == -errno.EOPNOTSUPP
        assert libev.ev_watched(loop.loop) == -errno.EOPNOTSUPP
    finally:
        loop.close()


@pytest.mark.skipif(UNDER_ASAN, reason="the run this test starts")
def test_every_other_test_here_passes_under_asan_and_ubsan():
    """A sanitized library works in an interpreter only with AddressSanitizer's runtime loaded before anything
    else: the other tests of this file run again in one started with libasan preloaded (leaks not checked:
    the interpreter frees little before it exits). A report aborts that run."""
    libasan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = {**native.sanitized_env(detect_leaks=False), "LD_PRELOAD": libasan, "EPOLLBENCH_EV_UNDER_ASAN": "1"}
    # --capture=sys: a report goes to file descriptor 2, which pytest would otherwise capture and lose in the abort.
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "--capture=sys"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    report = native.sanitizer_report(output)
    assert proc.returncode == 0 and report is None, report or output[-5000:]
    assert " passed" in proc.stdout.splitlines()[-1], output[-2000:]
