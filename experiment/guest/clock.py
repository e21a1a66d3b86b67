"""The guest's clock under TCG. QEMU's TCG hands the guest the host's time-stamp counter, but a microvm has no
HPET or ACPI PM timer to measure its rate against, its PIT calibration fails now and then under emulation, and
the clocksource watchdog then drops the TSC for jiffies, which lag when timer ticks come late: the guest's
seconds would be longer than real ones, and every rate it measures too high. So the guest is told the host's
TSC rate (tsc_early_khz, measured here) and to trust its TSC (tsc=reliable); clock_ratio() checks the result."""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import time
from datetime import datetime
from pathlib import Path

import docker

# x86-64: rdtsc; shl rdx, 32; or rax, rdx; ret
RDTSC_CODE = bytes.fromhex("0f3148c1e2204809d0c3")


def _rdtsc():
    """A callable returning the TSC, from a page of executable memory; None where that is refused."""
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError, ValueError):
        return None
    page.write(RDTSC_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
    function.page = page  # keeps the page mapped as long as the function lives
    return function


def host_tsc_khz(interval_s: float = 0.2) -> int:
    """The host's TSC rate in kHz: counted against the monotonic clock over interval_s, else /proc/cpuinfo's
    "cpu MHz" (the TSC's rate on a VM and on a CPU with constant_tsc)."""
    rdtsc = _rdtsc() if os.uname().machine == "x86_64" else None
    if rdtsc is not None:
        start_ns, start_ticks = time.monotonic_ns(), rdtsc()
        time.sleep(interval_s)
        end_ns, end_ticks = time.monotonic_ns(), rdtsc()
        return round((end_ticks - start_ticks) * 1e6 / (end_ns - start_ns))
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    return round(float(m.group(1)) * 1000) if m else 0


def tcg_cmdline() -> list[str]:
    """The kernel parameters that keep a TCG guest's clock on the host's TSC rate."""
    khz = host_tsc_khz()
    return [f"tsc_early_khz={khz}", "tsc=reliable"] if khz else []


def _guest_time(client: docker.DockerClient) -> tuple[float, float, float]:
    """(host monotonic seconds before the request, after it, the guest's wall clock in seconds between them)."""
    before = time.monotonic()
    text = client.info()["SystemTime"]
    after = time.monotonic()
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)", text)
    if not m:
        raise ValueError(f"unreadable SystemTime {text!r}")
    seconds = datetime.fromisoformat(m.group(1) + (m.group(3) or "").replace("Z", "+00:00")).timestamp()
    return before, after, seconds + float("0." + (m.group(2) or "0"))


def clock_ratio(client: docker.DockerClient, interval_s: float = 3.0) -> tuple[float, float, float]:
    """The guest's seconds per host second over interval_s, read through its engine: (estimate, lowest,
    highest). The guest read its clock somewhere within each request, so the true ratio lies between lowest and
    highest; an emulated guest's slow answers widen them."""
    before_1, after_1, guest_1 = _guest_time(client)
    time.sleep(interval_s)
    before_2, after_2, guest_2 = _guest_time(client)
    elapsed = guest_2 - guest_1
    estimate = elapsed / ((before_2 + after_2) / 2 - (before_1 + after_1) / 2)
    return estimate, elapsed / (after_2 - before_1), elapsed / (before_2 - after_1)
