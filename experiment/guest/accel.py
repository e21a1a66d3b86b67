"""KVM or TCG, and why. `auto` boots a probe guest (the kernel with its initramfs alone, which prints a marker and
ends) under KVM and takes TCG when that fails, the probe's error as the reason; `kvm` refuses in one line when
KVM fails; `tcg` is taken as asked. The QEMU binary is qemu-system-x86_64 (Debian's qemu-system-x86, installed
when missing), or EPOLLBENCH_QEMU's."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..host import machine
from .initramfs import PROBE_MARKER

MODES = ("auto", "kvm", "tcg")
PROBE_TIMEOUT_S = 60
KVM_DEVICE = "/dev/kvm"
QEMU, QEMU_PACKAGE = "qemu-system-x86_64", "qemu-system-x86"  # the binary and the Debian package holding it
_probed: dict[tuple[str, str], str | None] = {}


@dataclass(frozen=True)
class Accelerator:
    """The accelerator a guest runs under: kvm or tcg, and why it is that one."""

    name: str
    reason: str

    def qemu_args(self) -> list[str]:
        """QEMU's -accel and -cpu for it."""
        return ["-accel", "kvm", "-cpu", "host"] if self.name == "kvm" else ["-accel", "tcg", "-cpu", "max"]


def installed_qemu() -> str | None:
    """The QEMU a run would use, when it is there: EPOLLBENCH_QEMU, else qemu-system-x86_64 on the PATH."""
    return os.environ.get("EPOLLBENCH_QEMU") or shutil.which(QEMU)


def qemu_binary() -> str:
    """The QEMU to run: installed_qemu(), else qemu-system-x86 installed."""
    found = installed_qemu()
    if found:
        return found
    machine.ensure_packages([QEMU_PACKAGE], "booting kernels in QEMU guests")
    return shutil.which(QEMU) or QEMU


def qemu_version() -> str:
    """QEMU's version line, e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"."""
    proc = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True)
    return (proc.stdout.strip().splitlines() or ["unknown"])[0]


def choose(mode: str, vmlinuz: Path, initrd: Path) -> Accelerator:
    """The accelerator for a mode (auto, kvm or tcg); a UserError for kvm when KVM cannot boot the probe."""
    if mode not in MODES:
        raise UserError(f"unknown accelerator {mode!r}: give auto, kvm or tcg")
    if mode == "tcg":
        return Accelerator("tcg", "asked for (--accel tcg)")
    failure = kvm_failure(vmlinuz, initrd)
    if failure is None:
        return Accelerator("kvm", "the KVM probe guest booted")
    if mode == "kvm":
        raise UserError(f"KVM cannot run the guest ({failure}): use --accel tcg (emulated, several times slower) "
                        "or auto")
    return Accelerator("tcg", f"KVM failed: {failure}")


def kvm_failure(vmlinuz: Path, initrd: Path) -> str | None:
    """Why KVM cannot boot the probe guest, or None when it can (asked once per QEMU and kernel)."""
    key = (qemu_binary(), str(vmlinuz))
    if key not in _probed:
        _probed[key] = _probe(vmlinuz, initrd)
    return _probed[key]


def device_failure() -> str | None:
    """Why KVM cannot be used, as far as its device tells without a probe: None when /dev/kvm is there to open."""
    return None if os.access(KVM_DEVICE, os.R_OK | os.W_OK) else f"{KVM_DEVICE} is missing or not accessible"


def _probe(vmlinuz: Path, initrd: Path) -> str | None:
    if failure := device_failure():
        return failure
    with tempfile.TemporaryDirectory(prefix="epollbench-kvm-probe-") as folder:
        console = Path(folder) / "console.log"
        command = [qemu_binary(), "-M", "microvm", *Accelerator("kvm", "").qemu_args(), "-smp", "1", "-m", "256",
                   "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append",
                   "console=ttyS0 epollbench.probe panic=-1 loglevel=4", "-serial", f"file:{console}",
                   "-display", "none", "-monitor", "none", "-no-reboot"]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"the probe guest did not end within {PROBE_TIMEOUT_S} s"
        if console.is_file() and PROBE_MARKER in console.read_text(errors="replace"):
            return None
        return _reason(proc.stderr, proc.returncode)


def _reason(stderr: str, returncode: int) -> str:
    """One line from QEMU's complaint: its first error line (else its last line), or its exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or [f"QEMU exited with {returncode} before the probe's marker"])[0 if errors else -1]
    return line.removeprefix("qemu-system-x86_64: ").removeprefix("error: ")[:200]
