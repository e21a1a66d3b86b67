#!/usr/bin/env python3
"""pyhttpd - ephttpd's behaviour in Python (3.11, standard library only): the server a Python user gets
from the event interfaces of the standard library, measured the same way as ephttpd.

What it is: a server that answers every GET with 200 and a body of --msgsize bytes, and HEAD with the same
head and no body, so that what a load test measures is event notification and the socket calls around it,
plus the interpreter's cost per event.

The model: one single-threaded loop.  --backend select, poll or epoll runs our own loop on
selectors.SelectSelector, PollSelector or EpollSelector (named, never DefaultSelector, so that the backend
is the one asked for); --backend asyncio runs an asyncio.Protocol on asyncio's SelectorEventLoop over
EpollSelector (Protocol, not streams: streams add a task and buffer copies per connection).  Both follow
ephttpd where it matters: keep-alive (HTTP/1.1 unless "Connection: close", 1.0 only with
"Connection: keep-alive"), pipelined requests answered in order with one send, one empty line before a
request line ignored (RFC 9112 section 2.2), a backlog written on writability while the connection is not
read, 400 for a malformed request (405 for another method, 431 for a head over 8 KiB).  After a response that
ends the connection (an error, or a 200 that is not keep-alive) comes our FIN, and the peer's input is
discarded until it closes: a close with input unread would send a reset, which can destroy the response
before the client reads it.  No timers: an idle or dead connection, one that sent half a request, costs
nothing until its peer closes it.  Responses are built once; parsed request heads are memoised (a load
generator sends the same few heads again and again), so a keep-alive request costs one recv, one dict
lookup and one send.

Output: JSON lines on stdout, the same as ephttpd's - "listening" once connections are accepted, a
"snapshot" on SIGUSR1 (serving goes on), and on SIGTERM or SIGINT exactly one "stats" line, then exit 0.
Errors go to stderr; usage errors exit 2.  wait_calls and events count the waits that returned connection
or listener events: the wakeups our own signals cause are left out, so a snapshot of an idle server shows
no wakeup at all.  responses_200 counts responses once written to the socket (asyncio: once handed to the
transport).

What it does not do: serve files, accept request bodies, time anything out, TLS, host names in --bind,
several workers.  The select backend refuses (closes and counts) connections whose descriptor is at or
above FD_SETSIZE, which select(2) cannot watch; asyncio, out of descriptors, pauses accepting for a second
(its own behaviour) instead of refusing.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import sys

# fdlimit.py, shared with deadconn: beside this program in the image (/usr/local/bin), in images/pylib/ in the
# source tree.
sys.path.append(os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "pylib"))
import fdlimit  # noqa: E402

DEFAULT_BACKEND = "epoll"
DEFAULT_BIND = "127.0.0.1"  # loopback: with host networking a wildcard would expose it
DEFAULT_PORT = 8080
DEFAULT_BACKLOG = 2048
DEFAULT_MSGSIZE = 128
MAX_MSGSIZE = 64 << 20

SELECTORS = {"select": selectors.SelectSelector, "poll": selectors.PollSelector,
             "epoll": selectors.EpollSelector}
BACKENDS = (*SELECTORS, "asyncio")
READ_SIZE = 65536       # far more than a request head: a short read means drained
HEAD_MAX = 8192         # a request head longer than this gets 431, as in ephttpd
FD_SETSIZE = 1024       # select(2) cannot watch a descriptor at or above this
MEMO_MAX = 4096         # distinct request heads whose verdict is remembered

# ---------------------------------------------------------------------------------------------- HTTP

OK, OK_CLOSE, HEAD_OK, HEAD_CLOSE, BAD_REQUEST, BAD_METHOD, TOO_LARGE = range(7)
KEEP_ALIVE = {OK, HEAD_OK}  # the responses after which the connection goes on
STATUS = {OK: 200, OK_CLOSE: 200, HEAD_OK: 200, HEAD_CLOSE: 200, BAD_REQUEST: 400, BAD_METHOD: 405,
          TOO_LARGE: 431}

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) [\x21-\x7e]+ HTTP/1\.([01])\r?")
_PARTIAL_LINE = re.compile(rb"(" + _TCHAR + rb"*)(?:( [\x21-\x7e]*)( .*)?)?", re.S)
_VERSION_PREFIXES = {v[:i] for v in (b" HTTP/1.0\r", b" HTTP/1.1\r") for i in range(1, len(v) + 1)}
_HEADER = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*(.*?)[ \t]*\r?", re.S)
_HEAD_END = re.compile(rb"\n\r?\n")


def response(status: int, reason: str, body: bytes, keep_alive: bool, extra: str = "",
             with_body: bool = True) -> bytes:
    """with_body False: the head alone, as for HEAD."""
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: pyhttpd\r\nContent-Type: text/plain\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + (body if with_body else b"")


def responses(msgsize: int) -> dict[int, bytes]:
    body = b"x" * msgsize
    return {OK: response(200, "OK", body, True), OK_CLOSE: response(200, "OK", body, False),
            HEAD_OK: response(200, "OK", body, True, with_body=False),
            HEAD_CLOSE: response(200, "OK", body, False, with_body=False),
            BAD_REQUEST: response(400, "Bad Request", b"malformed request\n", False),
            BAD_METHOD: response(405, "Method Not Allowed", b"only GET and HEAD are served\n", False,
                                 "Allow: GET, HEAD\r\n"),
            TOO_LARGE: response(431, "Request Header Fields Too Large", b"request head over 8 KiB\n", False)}


def parse_head(head: bytes) -> int:
    """The verdict on a complete request head (request line, headers, blank line)."""
    lines = head.split(b"\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return BAD_REQUEST
    close = keep_alive = has_body = False
    for line in lines[1:-2]:
        header = _HEADER.fullmatch(line)
        if header is None:
            return BAD_REQUEST
        name, value = header[1].lower(), header[2]
        if name == b"connection":
            options = {o.strip(b" \t").lower() for o in value.split(b",")}
            close = close or b"close" in options
            keep_alive = keep_alive or b"keep-alive" in options
        elif name == b"content-length":
            if not value.isdigit():
                return BAD_REQUEST
            has_body = has_body or int(value) > 0
        elif name == b"transfer-encoding":
            has_body = True
    method = request_line[1]
    if method not in (b"GET", b"HEAD"):
        return BAD_METHOD
    if has_body:  # the body of a GET or HEAD would be taken for the next request
        return BAD_REQUEST
    stays = not close and (request_line[2] == b"1" or keep_alive)
    if method == b"GET":
        return OK if stays else OK_CLOSE
    return HEAD_OK if stays else HEAD_CLOSE


def empty_line_length(data: bytes, pos: int) -> int:
    """Bytes of the one empty line before a request line at pos that is ignored (RFC 9112 section 2.2): a
    client may send a CRLF after a request."""
    if data.startswith(b"\n", pos):
        return 1
    return 2 if data.startswith(b"\r\n", pos) else 0


def may_become_request(partial: bytes) -> bool:
    """Whether the start of a head with no blank line yet can still become a valid request: a request line
    that cannot is rejected at once, as ephttpd does, not when a blank line or 8 KiB arrive."""
    newline = partial.find(b"\n")
    if newline >= 0:
        return _REQUEST_LINE.fullmatch(partial[:newline]) is not None
    m = _PARTIAL_LINE.fullmatch(partial)
    if m is None:
        return False
    method, target, version = m.groups()
    if target is not None and not method:
        return False
    return version is None or (len(target) > 1 and version in _VERSION_PREFIXES)


class Http:
    """Request heads to verdicts, memoised; the counters every backend shares."""

    def __init__(self, msgsize: int):
        self.responses = responses(msgsize)
        self.ok = self.responses[OK]
        self.memo: dict[bytes, int] = {}
        self.counters = dict.fromkeys(("accepted", "refused", "closed", "open", "requests", "responses_200",
                                       "responses_4xx", "wait_calls", "events", "peak_open"), 0)

    def verdict(self, head: bytes) -> int:
        verdict = self.memo.get(head)
        if verdict is None:
            verdict = parse_head(head)
            if len(self.memo) < MEMO_MAX:
                self.memo[head] = verdict
        return verdict

    def answer(self, data: bytes) -> tuple[bytes, int, int | None, bytes]:
        """(the responses to send, how many keep-alive 200s they begin with, the final response or None, the
        unfinished rest) for data read. Nothing after a final response is read as a request."""
        runs: list[list[int]] = []  # [response, count]: the keep-alive ones, alike in a row
        oks, pos, end = 0, 0, len(data)
        final, rest = None, b""
        while pos < end:
            start = pos + empty_line_length(data, pos)
            m = _HEAD_END.search(data, start)
            if m is None or m.end() - pos > HEAD_MAX:
                rest = data[pos:]
                if len(rest) >= HEAD_MAX:
                    final, rest = TOO_LARGE, b""
                elif rest != b"\r" and not may_become_request(data[start:]):  # a CR may begin the empty line
                    final, rest = BAD_REQUEST, b""
                break
            verdict = self.verdict(data[start:m.end()])
            pos = m.end()
            if verdict not in KEEP_ALIVE:
                final = verdict
                break
            oks += 1
            if runs and runs[-1][0] == verdict:
                runs[-1][1] += 1
            else:
                runs.append([verdict, 1])
        self.counters["requests"] += oks + (final is not None)
        out = b"".join(self.responses[which] * count for which, count in runs)
        if final is not None:
            out += self.responses[final]
        return out, oks, final, rest

    def sent(self, oks: int, final: int | None) -> None:
        if final is not None:
            if STATUS[final] == 200:
                oks += 1
            else:
                self.counters["responses_4xx"] += 1
        self.counters["responses_200"] += oks

    def admitted(self) -> None:
        c = self.counters
        c["accepted"] += 1
        c["open"] += 1
        if c["open"] > c["peak_open"]:
            c["peak_open"] = c["open"]

    def closed(self) -> None:
        self.counters["closed"] += 1
        self.counters["open"] -= 1

    def snapshot(self) -> dict:
        c = dict(self.counters)
        c["events_per_wait"] = round(c["events"] / c["wait_calls"], 3) if c["wait_calls"] else 0.0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        c["user_cpu_s"] = round(usage.ru_utime, 6)
        c["sys_cpu_s"] = round(usage.ru_stime, 6)
        return c


# ------------------------------------------------------------------------------------- selectors loop


class Connection:
    __slots__ = ("sock", "stash", "out", "out_oks", "final", "lingering")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.stash = b""
        self.out: memoryview | None = None  # unsent output: the connection waits for writability alone
        self.out_oks = 0
        self.final: int | None = None
        self.lingering = False


LISTENER = object()


class SelectorServer:
    """Our own loop on one of the selectors classes; serves until SIGTERM or SIGINT."""

    def __init__(self, backend: str, listener: socket.socket, http: Http):
        self.selector = SELECTORS[backend]()
        self.listener = listener
        self.http = http
        self.fd_cap = FD_SETSIZE if backend == "select" else None
        self.reserve_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.stop_requested = self.snapshot_requested = False
        self.wake_read, self.wake_write = socket.socketpair()
        for sock in (self.wake_read, self.wake_write):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_snapshot)
        self.selector.register(self.wake_read, selectors.EVENT_READ, None)
        self.selector.register(listener, selectors.EVENT_READ, LISTENER)

    def _on_stop(self, _signum, _frame) -> None:
        self.stop_requested = True

    def _on_snapshot(self, _signum, _frame) -> None:
        self.snapshot_requested = True

    def run(self, announce) -> dict:
        announce()
        select, counters = self.selector.select, self.http.counters
        while not self.stop_requested:
            served = 0
            for key, _mask in select():
                conn = key.data
                if conn is None:
                    self._drain_wake()
                    continue
                served += 1
                if conn is LISTENER:
                    self._accept()
                elif conn.sock is None:
                    continue  # closed earlier in this batch
                elif conn.out is not None:
                    self._flush(conn)
                else:
                    self._read(conn)
            # Wakeups by our own signals are not the workload's.
            if served:
                counters["wait_calls"] += 1
                counters["events"] += served
            if self.snapshot_requested:
                self.snapshot_requested = False
                emit({"event": "snapshot", "worker": 0, "pid": os.getpid(), **self.http.snapshot()})
        return self.http.snapshot()

    def _drain_wake(self) -> None:
        try:
            while self.wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE) and self._refuse_one():
                    continue
                return  # ENOBUFS, ENOMEM: try at the next wait
            if self.fd_cap is not None and sock.fileno() >= self.fd_cap:
                sock.close()
                self.http.counters["refused"] += 1
                continue
            sock.setblocking(False)
            conn = Connection(sock)
            self.selector.register(sock, selectors.EVENT_READ, conn)
            self.http.admitted()

    def _refuse_one(self) -> bool:
        """Out of descriptors: give up the reserve to take one connection off the queue and close it;
        left queued, it would make the listener ready again at once and the loop would spin."""
        os.close(self.reserve_fd)
        try:
            sock, _ = self.listener.accept()
            sock.close()
            self.http.counters["refused"] += 1
            return True
        except OSError:
            return False
        finally:
            self.reserve_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def _close(self, conn: Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = None
        self.http.closed()

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if conn.lingering:
            return
        http = self.http
        if conn.stash:
            data = conn.stash + data
            conn.stash = b""
        elif http.memo.get(data) == OK:  # the whole read is one known keep-alive GET: the common case
            http.counters["requests"] += 1
            self._send(conn, http.ok, 1, None)
            return
        out, oks, final, conn.stash = http.answer(data)
        if out:
            self._send(conn, out, oks, final)

    def _send(self, conn: Connection, out: bytes, oks: int, final: int | None) -> None:
        try:
            sent = conn.sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent == len(out):
            if final is None:
                self.http.counters["responses_200"] += oks
            else:
                self._sent(conn, oks, final)
            return
        conn.out, conn.out_oks, conn.final = memoryview(out)[sent:], oks, final
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if sent < len(conn.out):
            conn.out = conn.out[sent:]
            return
        conn.out = None
        # Input was not read while the backlog lasted: level-triggered, it is announced again.
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._sent(conn, conn.out_oks, conn.final)

    def _sent(self, conn: Connection, oks: int, final: int | None) -> None:
        self.http.sent(oks, final)
        if final is None:
            return
        # Input may be left unread: a close now could turn into a reset that destroys the response before
        # the client reads it. Send our FIN and discard input until the peer's.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True


# ---------------------------------------------------------------------------------------------- asyncio


class CountingEpollSelector(selectors.EpollSelector):
    """asyncio's selector, counting the waits that returned connection or listener events."""

    def __init__(self, counters: dict):
        super().__init__()
        self.counters = counters
        self.own: set[int] = set()  # the loop's self-pipe: its wakeups are our signals'

    def select(self, timeout=None):
        ready = super().select(timeout)
        served = sum(1 for key, _ in ready if key.fd not in self.own)
        if served:
            self.counters["wait_calls"] += 1
            self.counters["events"] += served
        return ready


class HttpProtocol(asyncio.Protocol):
    def __init__(self, http: Http):
        self.http = http
        self.transport: asyncio.Transport | None = None
        self.stash = b""
        self.lingering = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.http.admitted()

    def connection_lost(self, exc) -> None:
        self.http.closed()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        http = self.http
        if self.stash:
            data = self.stash + data
            self.stash = b""
        elif http.memo.get(data) == OK:
            http.counters["requests"] += 1
            http.counters["responses_200"] += 1
            self.transport.write(http.ok)
            return
        out, oks, final, self.stash = http.answer(data)
        if out:
            self.transport.write(out)
            http.sent(oks, final)
        if final is not None:
            self.lingering = True
            self.transport.write_eof()  # our FIN once the response is out; the peer's EOF closes

    def eof_received(self) -> bool:
        return False

    # Not reading while the backlog lasts, as the selectors loop and ephttpd.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def run_asyncio(listener: socket.socket, http: Http, backlog: int, announce) -> dict:
    selector = CountingEpollSelector(http.counters)
    loop = asyncio.SelectorEventLoop(selector)
    selector.own = set(selector.get_map())
    asyncio.set_event_loop(loop)
    told = set()

    def tell_once(_loop, context: dict) -> None:
        """asyncio reports a failed accept (out of descriptors) with a traceback every time it retries, once
        a second: say each kind of trouble once, in one line."""
        message = context.get("message", "unexpected error")
        error = context.get("exception")
        text = f"asyncio: {message}" + (f": {error}" if error else "")
        if text not in told:
            told.add(text)
            complain(f"{text} (said once)")

    loop.set_exception_handler(tell_once)
    stopped = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stopped.done() or stopped.set_result(None))
    loop.add_signal_handler(signal.SIGUSR1, lambda: emit({"event": "snapshot", "worker": 0, "pid": os.getpid(),
                                                          **http.snapshot()}))

    async def serve() -> None:
        server = await loop.create_server(lambda: HttpProtocol(http), sock=listener, backlog=backlog)
        announce()
        await stopped
        server.close()

    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    return http.snapshot()


# ------------------------------------------------------------------------------------------------ setup


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")


def int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got '{text}'")
        return value
    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="pyhttpd", description="Answers every HTTP/1.0 and 1.1 GET with 200 and a body of "
                    "--msgsize bytes, through one event loop on the backend chosen. JSON lines on stdout: "
                    "'listening' when ready; 'snapshot' on SIGUSR1; one 'stats' line on SIGTERM or SIGINT, "
                    "then exit 0.")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, metavar="NAME",
                        help=f"event backend: {', '.join(BACKENDS)} (default: %(default)s)")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDR",
                        help="numeric IPv4 or IPv6 address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int_in(0, 65535), default=DEFAULT_PORT, metavar="N",
                        help="TCP port; 0 takes a free one, the listening line says which (default: %(default)s)")
    parser.add_argument("--backlog", type=int_in(1, 2**31 - 1), default=DEFAULT_BACKLOG, metavar="N",
                        help="listen() backlog, capped by net.core.somaxconn (default: %(default)s)")
    parser.add_argument("--msgsize", type=int_in(0, MAX_MSGSIZE), default=DEFAULT_MSGSIZE, metavar="BYTES",
                        help="body size of every 200 response (default: %(default)s)")
    options = parser.parse_args(argv)
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown backend '{options.backend}': use one of {', '.join(BACKENDS)}")
    return options


def open_listener(bind: str, port: int, backlog: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0][0]
    except socket.gaierror as error:
        raise UsageError(f"--bind {bind}: not a numeric IPv4 or IPv6 address ({error.strerror})") from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY: no setsockopt per connection.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((bind, port))
    listener.listen(backlog)
    listener.setblocking(False)
    return listener


def complain(text: str) -> None:
    print(f"pyhttpd: {text}", file=sys.stderr, flush=True)


def emit(event: dict) -> None:
    """One JSON line in one write, so a reader never sees half of one."""
    os.write(sys.stdout.fileno(), (json.dumps(event, separators=(",", ":")) + "\n").encode())


def main(argv: list[str]) -> int:
    try:
        options = parse_args(argv)
        fd_limit = fdlimit.raise_fd_limit(complain)
        listener = open_listener(options.bind, options.port, options.backlog)
    except UsageError as error:
        complain(str(error))
        return 2
    except OSError as error:
        complain(f"cannot listen on {options.bind} port {options.port}: {error.strerror}")
        return 1
    http = Http(options.msgsize)
    backend = f"python-{options.backend}"

    def announce() -> None:
        emit({"event": "listening", "bind": options.bind, "port": listener.getsockname()[1], "backend": backend,
              "workers": 1, "fd_limit": fd_limit, "python": sys.version.split()[0]})

    if options.backend == "asyncio":
        final = run_asyncio(listener, http, options.backlog, announce)
    else:
        final = SelectorServer(options.backend, listener, http).run(announce)
    per_worker = {"worker": 0, "pid": os.getpid(), **final}
    emit({"event": "stats", "backend": backend, "workers": 1, "fd_limit": fd_limit, **final,
          "per_worker": [per_worker]})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
