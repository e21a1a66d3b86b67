"""A guest's life: boot a kernel in a QEMU microvm with the guests' root disk (writes discarded when it ends), wait
until its dockerd answers on a port forwarded from 127.0.0.1, hand out that engine's URL, and shut it down.

    with qemu.running(kernels.find("6.1"), run_folder, vcpus=2) as guest:
        client = docker.DockerClient(base_url=guest.url)  # or the harness's --server-engine guest.url

In the folder the caller gives (the run folder), each guest leaves guest-<label>.console.log (the serial
console), .qemu.log (QEMU's own output), .pid and .json (its facts: kernel, accelerator and why, QEMU's
version, the console's epollbench-fact lines, the boot time, the clock check). Its QEMU is named
epollbench-guest-<label> and carries its owner's pid, so leftovers.py finds the guests of a killed run."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker

from ..errors import UserError
from ..host import engine, machine
from . import accel, clock, initramfs, rootfs
from .kernels import Kernel
from .leftovers import FOLDER_ENV, OWNER_ENV, PROCESS_PREFIX, owner_identity

GUEST_ENGINE_PORT = 2375
READY_MARKER = "EPOLLBENCH-GUEST-READY"
BOOT_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_S = 20
CLOCK_TOLERANCE = 0.03


@dataclass
class Guest:
    """A running guest: what it runs, under which accelerator, and the port its dockerd answers on."""

    label: str
    folder: Path
    kernel: Kernel
    accelerator: accel.Accelerator
    vcpus: int
    memory_mb: int
    port: int
    process: subprocess.Popen
    qmp_folder: Path
    facts: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The guest's Docker engine, for --server-engine / --client-engine."""
        return f"tcp://127.0.0.1:{self.port}"

    def path(self, suffix: str) -> Path:
        """One of the guest's files in its folder: console.log, qemu.log, pid, json."""
        return self.folder / f"guest-{self.label}.{suffix}"


def drives(disks: list[Path]) -> list[str]:
    """-drive and -device for each disk, as virtio-blk with its writes discarded when QEMU ends."""
    args = []
    for number, disk in enumerate(disks):
        args += ["-drive", f"if=none,id=disk{number},file={disk},format=raw,snapshot=on",
                 "-device", f"virtio-blk-device,drive=disk{number}"]
    return args


def command(guest: Guest, initrd: Path, disks: list[Path], cmdline: list[str]) -> list[str]:
    """QEMU's command line for the guest."""
    forward = f"hostfwd=tcp:127.0.0.1:{guest.port}-:{GUEST_ENGINE_PORT}"
    return [accel.qemu_binary(), "-name", f"epollbench-guest,process={PROCESS_PREFIX}{guest.label}",
            "-M", "microvm", *guest.accelerator.qemu_args(), "-smp", str(guest.vcpus), "-m", str(guest.memory_mb),
            "-kernel", str(guest.kernel.vmlinuz), "-initrd", str(initrd), "-append", " ".join(cmdline),
            *drives(disks),
            "-netdev", f"user,id=n0,restrict=on,{forward}", "-device", "virtio-net-device,netdev=n0",
            "-serial", f"file:{guest.path('console.log')}", "-display", "none", "-monitor", "none",
            "-qmp", f"unix:{guest.qmp_folder / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(guest.path("pid")), "-no-reboot"]


def kernel_cmdline(accelerator: accel.Accelerator, extra: tuple[str, ...] = ()) -> list[str]:
    """The guest kernel's command line: serial console, the root disk, a panic ends the guest, and under TCG
    the host's TSC rate (clock.py)."""
    line = ["console=ttyS0", "root=/dev/vda", "rw", "panic=-1", "loglevel=4"]
    return line + (clock.tcg_cmdline() if accelerator.name == "tcg" else []) + list(extra)


def _die_with_parent() -> None:
    """In QEMU's child process before exec: SIGTERM when the process that booted it dies."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(guest: Guest, initrd: Path, disks: list[Path], extra_cmdline: tuple[str, ...]) -> None:
    """QEMU started for the guest, its output to guest-<label>.qemu.log."""
    cmd = command(guest, initrd, disks, kernel_cmdline(guest.accelerator, extra_cmdline))
    env = dict(os.environ, **{OWNER_ENV: owner_identity(os.getpid()), FOLDER_ENV: str(guest.folder)})
    with open(guest.path("qemu.log"), "wb") as log:
        guest.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
    guest.facts.update(qemu_command=cmd, qemu_pid=guest.process.pid)


def boot(kernel: Kernel, folder: Path, *, vcpus: int = 2, memory_mb: int = 4096, accelerator: str = "auto",
         label: str | None = None, timeout_s: float = BOOT_TIMEOUT_S, extra_cmdline: tuple[str, ...] = (),
         images_disk: Path | None = None, say=print) -> Guest:
    """A guest of the kernel, booted and its dockerd answering at guest.url; a UserError with the console's last
    lines when it does not within timeout_s (the console log is kept). images_disk (imagedisk.build) becomes its
    dockerd's data root, images in place. Boot it from the thread that outlives it: QEMU gets SIGTERM when
    that thread ends."""
    folder.mkdir(parents=True, exist_ok=True)
    initrd, disk = initramfs.build(kernel, say), rootfs.build(say)
    chosen = accel.choose(accelerator, kernel.vmlinuz or Path(), initrd)
    guest = Guest(label=re.sub(r"[^\w.-]", "_", label or kernel.release), folder=folder, kernel=kernel,
                  accelerator=chosen, vcpus=vcpus, memory_mb=memory_mb, port=machine.free_port(),
                  process=None,  # type: ignore[arg-type]  # set by start()
                  qmp_folder=Path(tempfile.mkdtemp(prefix="epollbench-qmp-")))
    say(f"booting {kernel.release} in a guest ({chosen.name}: {chosen.reason}; {vcpus} vCPUs, {memory_mb} MiB)")
    started = time.monotonic()
    start(guest, initrd, [disk] + ([images_disk] if images_disk else []), extra_cmdline)
    try:
        client = wait_ready(guest, started, timeout_s)
        guest.facts.update(boot_s=round(time.monotonic() - started, 1))
        record(guest, client)
    except BaseException:
        shutdown(guest)
        raise
    say(f"guest {guest.label} up in {guest.facts['boot_s']} s: its engine is {guest.url}")
    return guest


def wait_ready(guest: Guest, started: float, timeout_s: float) -> docker.DockerClient:
    """A client of the guest's dockerd once it answers through the forwarded port; a UserError when QEMU ends
    first or timeout_s pass from started."""
    while time.monotonic() < started + timeout_s:
        if guest.process.poll() is not None:
            raise UserError(f"the guest {guest.label} stopped before its dockerd answered (QEMU exited with "
                            f"{guest.process.returncode}): {failure_tail(guest)}")
        client = engine.answers(guest.url, timeout=3, plain=True)
        if client is not None:
            return client
        time.sleep(0.5)
    raise UserError(f"the guest {guest.label}'s dockerd did not answer within {timeout_s:g} s: "
                    f"{failure_tail(guest)}")


def console_tail(path: Path, lines: int = 5) -> list[str]:
    """The console's last non-empty lines."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


def failure_tail(guest: Guest) -> str:
    """The console's and QEMU's last lines, and where the logs are, for a failure's one line."""
    console = " | ".join(console_tail(guest.path("console.log"))) or "the console is empty"
    qemu = " | ".join(console_tail(guest.path("qemu.log"), 2))
    return f"console: {console}" + (f"; QEMU: {qemu}" if qemu else "") + \
        f" (logs: {guest.path('console.log')}, {guest.path('qemu.log')})"


def console_facts(text: str) -> dict[str, str]:
    """The guest's "epollbench-fact NAME=VALUE" console lines as {NAME: VALUE}."""
    return {m[1]: m[2] for m in re.finditer(r"^epollbench-fact ([\w.-]+)=(.*?)\r?$", text, re.M)}


def record(guest: Guest, client: docker.DockerClient) -> None:
    """The guest's facts gathered (kernel, accelerator, QEMU, console facts, the clock check) and written to
    guest-<label>.json."""
    console = guest.path("console.log").read_text(errors="replace")
    ratio, lowest, highest = clock.clock_ratio(client)
    guest.facts.update(label=guest.label, kernel=guest.kernel.facts(), accelerator=guest.accelerator.name,
                       accelerator_reason=guest.accelerator.reason, qemu_version=accel.qemu_version(),
                       vcpus=guest.vcpus, memory_mb=guest.memory_mb, engine_url=guest.url,
                       guest=console_facts(console), clock_ratio=round(ratio, 4),
                       clock_ratio_bounds=[round(lowest, 4), round(highest, 4)])
    guest.path("json").write_text(json.dumps(guest.facts, indent=2) + "\n")
    if highest < 1 - CLOCK_TOLERANCE or lowest > 1 + CLOCK_TOLERANCE:
        raise UserError(f"the guest {guest.label}'s clock runs at {ratio:.3f} (between {lowest:.3f} and "
                        f"{highest:.3f}) of the host's: its rates would be off; check guest.clocksource in "
                        f"{guest.path('json')}")


def _qmp_quit(path: Path) -> bool:
    """Asks QEMU to quit through its QMP socket; whether it took the command."""
    try:
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.settimeout(5)
            qmp.connect(str(path))
            qmp.recv(65536)
            for request in (b'{"execute": "qmp_capabilities"}\n', b'{"execute": "quit"}\n'):
                qmp.sendall(request)
                qmp.recv(65536)
        return True
    except OSError:
        return False


def shutdown(guest: Guest) -> None:
    """Ends the guest: QMP quit (its disk's writes are discarded anyway), then SIGTERM, then SIGKILL."""
    process = guest.process
    if process is not None and process.poll() is None:
        _qmp_quit(guest.qmp_folder / "qmp.sock")
        for stop in (lambda: None, process.terminate, process.kill):
            stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(SHUTDOWN_TIMEOUT_S)
                break
    shutil.rmtree(guest.qmp_folder, ignore_errors=True)


@contextlib.contextmanager
def running(kernel: Kernel, folder: Path, **options) -> Iterator[Guest]:
    """boot() as a context manager: the guest is shut down when the block ends, however it ends."""
    guest = boot(kernel, folder, **options)
    try:
        yield guest
    finally:
        shutdown(guest)
