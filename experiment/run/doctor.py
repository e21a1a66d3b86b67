"""`invoke doctor`: what the host has for a planned run, in seconds and without building or starting anything.

One line per check: ok, warn (the run goes, but something is short or missing, and the line says how to fix
it) or fail (`invoke reproduce` would stop: it runs the same checks first, gate(), and stops before building).
A missing engine that reproduce would install and start itself is a warn. The host settings are the
preflight's (host/preflight.assess), the dead-connection capacity the catalog's (catalog.dead_capacity), the
leftovers those `invoke clean` removes (run/leftovers.find).

A run in guests (--kernels) is judged for what it needs instead: QEMU, the accelerator and each kernel, as far
as the cache tells (doctor fetches nothing, and boots only KVM's probe guest, with a kernel already in the
cache). The host's fd limit, sysctls and the anatomy's tools are not judged for it: the levels run in guests,
which boot with their own.

Lives in run/ rather than host/: it judges the host against a plan, and names a run's leftovers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import docker.errors

from .. import catalog, model
from ..errors import UserError
from ..guest import accel, apt, initramfs, kernels
from ..guest.kernels import Kernel
from ..host import engine, images, machine, preflight, tracefs
from . import guests, leftovers
from .guests import GUEST_FD_LIMIT, GUEST_MEMORY_MB
from .plan import Plan, count_points, max_dead

OK, WARN, FAIL = "ok", "warn", "fail"
ENGINE_TIMEOUT_S = 3
PERF_TIMEOUT_S = 5
SLABINFO = Path("/proc/slabinfo")
CHROMIUM = ("/usr/bin/chromium", "chromium")
MEMINFO = Path("/proc/meminfo")
# Kernel memory per loopback connection held open, both ends (socket, TCP state, the unread request line):
# Slab grew 8.7-9.5 KiB per connection on the 6.18 development VM (4000 connections opened like deadconn's),
# plus deadconn's own object per socket.
MEMORY_PER_CONNECTION = 12 * 1024
# The containers of a point beside the connections: the server, deadconn's processes, the load generator.
MEMORY_BASE = 512 * 1024**2
# Disk: the base image and both images with the build stage's layers (a first build's, with room), and per
# point its record and raw outputs (a point of the reference paper run's, with room) plus the report.
IMAGES_DISK = 1536 * 1024**2
POINT_DISK = 32 * 1024
REPORT_DISK = 32 * 1024**2


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""
    # Whether gate() says it as a warning: not what reproduce's own preflight says later on, nor what does not
    # concern a run (perf, slabinfo, chromium). A failure is always said.
    gate_says: bool = True

    def line(self) -> str:
        return f"{self.level:<4}  {self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


def _engine(role: str, url: str | None) -> tuple[Check, docker.DockerClient | None]:
    shown = url or engine.default_url()
    try:
        client = engine.answers(url, ENGINE_TIMEOUT_S)
    except UserError as error:
        return Check(f"{role} engine", FAIL, str(error).split(": ", 1)[0], str(error).split("; ", 1)[-1]), None
    if client is not None:
        version = client.version()
        return Check(f"{role} engine", OK, f"Docker {version.get('Version')} answers at {shown}"), client
    if shown != engine.DEFAULT_SOCKET:
        tls = " over TLS" if shown.startswith("tcp://") and engine.tls_settings(shown) else ""
        hint = "" if tls or not shown.startswith("tcp://") else \
            "; for an engine serving TLS set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH as for the docker CLI"
        return Check(f"{role} engine", FAIL, f"no Docker engine answers at {shown}{tls}",
                     f"start it there, or check the URL (DOCKER_HOST, --server-engine, --client-engine){hint}"), None
    if shutil.which("dockerd") or Path("/usr/sbin/dockerd").exists():
        return Check(f"{role} engine", WARN, f"no Docker engine answers at {shown}: reproduce starts dockerd",
                     "nothing to do, or start it yourself: dockerd (systemctl start docker)"), None
    if machine.is_debian_root():
        return Check(f"{role} engine", WARN, "Docker is not installed: reproduce installs docker.io and starts "
                     "dockerd", "nothing to do, or: apt-get install docker.io"), None
    return Check(f"{role} engine", FAIL, f"no Docker engine answers at {shown}, and it cannot be installed from "
                 "here (needs root on Debian)", "install Docker and start dockerd, or run as root on Debian"), None


def _base_image(client: docker.DockerClient | None, base_image: str) -> Check:
    if client is not None:
        try:
            found = client.images.get(base_image)
            return Check("base image", OK, f"{base_image} is there "
                         f"({found.labels.get(f'{images.LABEL}.base-origin', 'local')})")
        except docker.errors.ImageNotFound:
            pass
    where = "" if client is not None else " (no engine to look on)"
    repo, _, tag = base_image.partition(":")
    if not repo.endswith("debian") or not tag:
        return Check("base image", WARN, f"{base_image} is not there{where}: reproduce pulls it",
                     f"docker pull {base_image} or docker load it, if this host cannot reach its registry")
    try:
        machine.apt_mirror()
    except UserError as error:
        return Check("base image", WARN, f"{base_image} is not there{where}, and it cannot be bootstrapped: {error}",
                     f"docker load {base_image}, or configure apt")
    if shutil.which("mmdebstrap"):
        return Check("base image", OK, f"{base_image} is not there{where}: reproduce pulls it or bootstraps it "
                     "with mmdebstrap from the host's apt mirror (about a minute)")
    if machine.is_debian_root():
        return Check("base image", OK, f"{base_image} is not there{where}: reproduce pulls it or installs "
                     "mmdebstrap and bootstraps it from the host's apt mirror")
    return Check("base image", WARN, f"{base_image} is not there{where} and mmdebstrap is not installed: a run "
                 "stops unless the image can be pulled", "apt-get install mmdebstrap (as root)")


def _images(client: docker.DockerClient | None) -> Check:
    source = images.source_hash()
    tags = [f"epollbench/{target}:{source}" for target in images.TARGETS]
    if client is None:
        return Check("images", OK, f"{', '.join(tags)}: built by reproduce (no engine to look on)")
    missing = []
    for tag in tags:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    if missing:
        return Check("images", OK, f"{', '.join(missing)} not built for this tree yet: reproduce builds them "
                     "(about 2 minutes the first time)")
    return Check("images", OK, f"{', '.join(tags)} are built for this tree")


def _host_settings(plan: Plan, tune_host: bool) -> list[Check]:
    """The fd limit, the sysctls and loopback conntrack, as the run's preflight will judge them."""
    settings = preflight.read_host_settings()
    hard = settings[preflight.FD_HARD_LIMIT]
    top = max(plan.dead) if set(model.DEAD_SWEEPS) & set(plan.sweeps) else 0
    reachable = top if hard is None else min(top, max(max_dead(hard, s.backend, plan.active_connections)
                                                        for s in plan.series))
    findings = preflight.assess(settings, reachable, plan.active_connections,
                                source_addresses=max(1, top // 20000 + 1))
    checks = []
    capacity = None if hard is None else catalog.dead_capacity(hard, plan.active_connections)
    limit = f"open files per process: hard limit {hard}, so at most {capacity} dead connections per server"
    if capacity is None or capacity >= top:
        checks.append(Check("fd limit", OK, f"{limit}; the plan's top level is {top}"))
    else:
        checks.append(Check("fd limit", WARN, f"{limit}, below the plan's top level of {top}: the levels above "
                            "are recorded as skipped", "raise the hard limit of the shell that runs reproduce "
                            "(ulimit -Hn; LimitNOFILE for dockerd): see README, What a bigger host needs",
                            gate_says=False))
    conntrack = next((f for f in findings if f.setting == preflight.LOOPBACK_CONNTRACK), None)
    state = settings[preflight.LOOPBACK_CONNTRACK]
    if conntrack is None:
        checks.append(Check("loopback conntrack", OK, "loopback is untracked" if state["conntrack_loaded"]
                            else "connection tracking is not loaded"))
    else:
        checks.append(_tunable("loopback conntrack", conntrack, tune_host))
    sysctls = [f for f in findings if f.setting not in (preflight.FD_HARD_LIMIT, preflight.LOOPBACK_CONNTRACK)]
    checks += [_tunable(f.setting, f, tune_host) for f in sysctls]
    if not sysctls:
        checks.append(Check("sysctls", OK, f"enough for {reachable} dead and {plan.active_connections} active "
                            f"connections ({', '.join(n.rpartition('.')[2] for n in preflight.SYSCTLS)})"))
    return checks


def _tunable(name: str, finding: preflight.Finding, tune_host: bool) -> Check:
    detail = f"{finding.value}, needs {finding.needed}: {finding.why}"
    if not finding.tunable:
        return Check(name, WARN, detail, finding.fix, gate_says=False)
    if not tune_host:
        fix = finding.fix if "--tune-host" in finding.fix else f"run with --tune-host (as root), or: {finding.fix}"
        return Check(name, WARN, detail, fix, gate_says=False)
    if os.geteuid() != 0:
        return Check(name, FAIL, f"{finding.value}, needs {finding.needed}, and --tune-host needs root to raise it",
                     f"run as root, or: {finding.fix}")
    return Check(name, OK, f"{finding.value}, needs {finding.needed}: --tune-host raises it for the run")


def _in_guests(plan: Plan) -> list[Check]:
    """A run in guests: QEMU, the accelerator, each kernel; and why the host's settings and tools are not judged."""
    found = guests.cached_kernels(plan)
    return [_qemu(), _accelerator(plan, found), *_kernels(plan, found),
            Check("host settings", OK, "the fd limit, sysctls and loopback conntrack are not judged: the levels run "
                  f"in guests, which boot with the settings the plan needs and {GUEST_FD_LIMIT} open files"),
            Check("anatomy tools", OK, "perf, tracefs and slabinfo are not judged: the anatomy is not taken in a "
                  "guest (perf runs on the host and cannot see inside one)", gate_says=False)]


def _qemu() -> Check:
    found = accel.installed_qemu()
    if found is None:
        if machine.is_debian_root():
            return Check("qemu", WARN, f"{accel.QEMU} is not installed: reproduce installs {accel.QEMU_PACKAGE}",
                         f"nothing to do, or: apt-get install {accel.QEMU_PACKAGE}")
        return Check("qemu", FAIL, f"{accel.QEMU} is not installed, and it cannot be installed from here (needs "
                     "root on Debian)", f"apt-get install {accel.QEMU_PACKAGE} as root, or set EPOLLBENCH_QEMU")
    try:
        return Check("qemu", OK, f"{found}: {accel.qemu_version()}")
    except OSError as error:
        return Check("qemu", FAIL, f"{found} does not run: {error}",
                     f"apt-get install --reinstall {accel.QEMU_PACKAGE}, or set EPOLLBENCH_QEMU")


def _accelerator(plan: Plan, found: dict[str, Kernel | str | None]) -> Check:
    """KVM or TCG as the run's start will choose (accel.choose): KVM's probe guest booted now only when QEMU and
    a kernel with its initramfs are in the cache already, else left to the run's start."""
    if plan.accel == "tcg":
        return Check("accelerator", OK, "TCG, as asked (--accel tcg): emulated, several times slower")
    failure = accel.device_failure()
    if failure is None:
        probed = next((k for k in found.values() if isinstance(k, Kernel) and k.vmlinuz is not None
                       and initramfs.path_of(k).is_file()), None)
        if probed is None or accel.installed_qemu() is None:
            return Check("accelerator", OK, f"{accel.KVM_DEVICE} is there: whether KVM runs a guest is probed at the "
                         "run's start (no QEMU, or no kernel with its initramfs in the cache, to probe with now)")
        failure = accel.kvm_failure(probed.vmlinuz or Path(), initramfs.path_of(probed))
        if failure is None:
            return Check("accelerator", OK, f"KVM: a probe guest of {probed.release} booted under it")
    if plan.accel == "kvm":
        return Check("accelerator", FAIL, f"KVM cannot run the guests ({failure}), and --accel kvm takes nothing else",
                     "--accel tcg (emulated, several times slower) or auto")
    return Check("accelerator", WARN, f"KVM cannot run the guests ({failure}): they run under TCG, emulated, several "
                 "times slower", "a host where KVM runs guests (nested virtualization on), or --accel tcg to skip "
                 "the probe")


def _kernels(plan: Plan, found: dict[str, Kernel | str | None]) -> list[Check]:
    """Each --kernels item as the cache resolves it. One that names no kernel fails, unless it names a Debian
    build and the lists are over a day old: the run updates them before it resolves, and may find it."""
    age = apt.lists_age_s()
    result = []
    for spec, (name, kernel) in zip(plan.kernels, found.items(), strict=True):
        said = guests.describe_kernel(kernel)
        if not isinstance(kernel, str):
            result.append(Check(f"kernel {name}", OK, said))
        elif kernels.is_debian(spec) and age is not None and age >= apt.LISTS_MAX_AGE_S:
            result.append(Check(f"kernel {name}", WARN, f"{said} (as the apt lists of {age / 3600:.0f} h ago have "
                                "it; a run updates them first)", "check the name against the versions listed"))
        else:
            result.append(Check(f"kernel {name}", FAIL, said, "change it in --kernels"))
    return result


def _perf() -> Check:
    perf = shutil.which("perf")
    if perf is None:
        return Check("perf", WARN, "not installed: no profiles of the servers (reproduce does not need it)",
                     "apt-get install linux-perf")
    try:
        proc = subprocess.run([perf, "--version"], capture_output=True, text=True, timeout=PERF_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check("perf", WARN, f"{perf} does not run: {error}", "apt-get install --reinstall linux-perf")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return Check("perf", WARN, f"{perf} does not run for this kernel: {' '.join(tail)}",
                     "apt-get install linux-perf (the version for this kernel)")
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    level = int(paranoid.read_text()) if paranoid.exists() else None
    if os.geteuid() != 0 and level is not None and level > 1:
        return Check("perf", WARN, f"{proc.stdout.strip()}, but kernel.perf_event_paranoid is {level}: no kernel "
                     "profiles as a user", "run as root, or sysctl -w kernel.perf_event_paranoid=1")
    return Check("perf", OK, proc.stdout.strip())


def _tracefs() -> Check:
    """tracefs, which the anatomy's syscall counts need: mounted, or what reproduce does about it."""
    found = tracefs.check()
    if found.where is not None:
        return Check("tracefs", OK, f"mounted at {found.where}: the anatomy counts the system calls")
    if found.can_mount:
        return Check("tracefs", WARN, f"not mounted: reproduce mounts it at {tracefs.MOUNT_POINT} (as systemd does "
                     "at boot) for the anatomy's syscall counts", "nothing to do, or: "
                     + " ".join(tracefs.mount_command()))
    command = " ".join(tracefs.mount_command())
    if os.geteuid() != 0:
        fix = f"run as root (reproduce mounts it), or: sudo {command}"
    elif not tracefs.kernel_has():
        fix = "a kernel with tracefs (CONFIG_TRACING; Debian's has it)"
    else:
        fix = f"mount sysfs on /sys, then: {command}"
    return Check("tracefs", WARN, f"{found.reason}; the anatomy's points will lack their syscall counts (where the "
                 "CPU goes is still measured)", fix)


def _slabinfo() -> Check:
    try:
        with open(SLABINFO) as f:
            first = f.readline().strip()
        return Check("slabinfo", OK, f"{SLABINFO} is readable ({first})")
    except FileNotFoundError:
        return Check("slabinfo", WARN, f"{SLABINFO} does not exist: this kernel has no slab statistics",
                     "a kernel built with CONFIG_SLUB_DEBUG (Debian's is)")
    except PermissionError:
        return Check("slabinfo", WARN, f"{SLABINFO} is readable by root only: no kernel memory per connection",
                     "run as root")


def _chromium() -> Check:
    found = next((p for p in CHROMIUM if (os.path.isabs(p) and os.access(p, os.X_OK)) or
                  (not os.path.isabs(p) and shutil.which(p))), None)
    if found:
        return Check("chromium", OK, f"{shutil.which(found) or found}: the tests render the report in it")
    return Check("chromium", WARN, "not installed: the report's browser tests are skipped (and fail under CI)",
                 "apt-get install chromium (./run test installs it)")


def _disk(plan: Plan, client: docker.DockerClient | None, results_dir: Path, images_built: bool) -> list[Check]:
    """Free space where the results go and where the engine keeps images (one check when they share a disk)."""
    fd_limit = GUEST_FD_LIMIT if plan.kernels else machine.fd_hard_limit()
    needed = {"results": count_points(plan, fd_limit) * POINT_DISK + REPORT_DISK,
              "images": 0 if images_built else IMAGES_DISK}
    root = (client.info().get("DockerRootDir") if client is not None else None) or "/var/lib/docker"
    places = {"results": _existing(results_dir.resolve()), "images": _existing(Path(root))}
    by_disk: dict[int, list[str]] = {}
    for what, where in places.items():
        by_disk.setdefault(os.stat(where).st_dev, []).append(what)
    checks = []
    for whats in by_disk.values():
        where, need = places[whats[0]], sum(needed[w] for w in whats)
        free = shutil.disk_usage(where).free
        detail = f"{_gib(free)} free at {where}, the planned run needs about {_gib(need)}"
        name = f"disk ({', '.join(whats)})"
        if free < need:
            checks.append(Check(name, FAIL, detail, f"free space at {where}, or --results-dir elsewhere"))
        elif free < 2 * need:
            checks.append(Check(name, WARN, detail + ": little room to spare", f"free space at {where}"))
        else:
            checks.append(Check(name, OK, detail))
    return checks


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _gib(n: float) -> str:
    """A size in GiB, or in MiB below one GiB."""
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _memory(plan: Plan) -> Check:
    """MemAvailable against what the run holds at once: its connections and containers, or one guest."""
    available = None
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    if available is None:
        return Check("memory", WARN, f"{MEMINFO} has no MemAvailable: cannot tell", "")
    if plan.kernels:
        needed = GUEST_MEMORY_MB * 1024**2
        detail = f"{_gib(available)} available, each guest takes {_gib(needed)} (one at a time)"
        if available < needed:
            return Check("memory", WARN, detail + ": QEMU may fail to start, or the OOM killer end it", "free memory")
        return Check("memory", OK, detail)
    hard = machine.fd_hard_limit()
    top = max(plan.dead) if set(model.DEAD_SWEEPS) & set(plan.sweeps) else 0
    connections = min(top, max(max_dead(hard, s.backend, plan.active_connections) for s in plan.series)) \
        + plan.active_connections
    needed = MEMORY_BASE + connections * MEMORY_PER_CONNECTION
    detail = (f"{_gib(available)} available, the planned run needs about {_gib(needed)} "
              f"({connections} connections held open)")
    if available < needed:
        return Check("memory", WARN, detail + ": the kernel may refuse connections or the OOM killer end a "
                     "container", "free memory, or plan fewer dead connections (--dead)")
    return Check("memory", OK, detail)


def _leftovers(client: docker.DockerClient | None, results_dir: Path) -> Check:
    found = leftovers.find(client, results_dir)
    summary = found.summary()
    unknown = f"; {len(found.unknown)} run(s) whose containers cannot be judged are left alone" if found.unknown \
        else ""
    if summary is None:
        return Check("leftovers", OK, "no containers of runs that are not running, no unused image tags of ours, "
                     f"no host tuning left by a killed run{unknown}")
    return Check("leftovers", WARN, summary + unknown,
                 "./run clean" + (" (reproduce puts the host tuning back itself)" if found.journals else ""))


def checks(plan: Plan, results_dir: Path, server_engine: str | None = None, client_engine: str | None = None,
           tune_host: bool = False, base_image: str = images.DEFAULT_BASE_IMAGE) -> list[Check]:
    """Every check for the plan, in the order printed."""
    found, server = _engine("server", server_engine)
    result = [found]
    if client_engine and client_engine != (server_engine or engine.default_url()):
        result.append(_engine("client", client_engine)[0])
    result.append(_base_image(server, base_image))
    built = _images(server)
    result.append(built)
    if plan.kernels:
        result += _in_guests(plan)
    else:
        result += _host_settings(plan, tune_host)
        # Tools for looking closer: said by doctor, not by every reproduce.
        result += [replace(c, gate_says=False) for c in (_perf(), _tracefs(), _slabinfo())]
    result.append(replace(_chromium(), gate_says=False))  # for the tests
    result += _disk(plan, server, results_dir, "are built" in built.detail)
    result.append(_memory(plan))
    result.append(_leftovers(server, results_dir))
    return result


def report(found: list[Check], seconds: float, say: Callable[[str], None] = print) -> bool:
    """Says every line and a summary; whether none failed."""
    for check in found:
        say(check.line())
    counts = {level: sum(c.level == level for c in found) for level in (OK, WARN, FAIL)}
    say(f"doctor: {counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail ({seconds:.1f} s)"
        + (": `invoke reproduce` would stop" if counts[FAIL] else ""))
    return counts[FAIL] == 0


def gate(plan: Plan, results_dir: Path, server_engine: str | None = None, client_engine: str | None = None,
         tune_host: bool = False, base_image: str = images.DEFAULT_BASE_IMAGE,
         say: Callable[[str], None] = print) -> list[Check]:
    """reproduce's first step: the same checks; says the warnings its own preflight will not say later, and
    stops (a UserError naming each failure and its fix) before anything is built when one fails."""
    found = checks(plan, results_dir, server_engine, client_engine, tune_host, base_image)
    for check in found:
        if check.level == WARN and check.gate_says:
            say(f"doctor: {check.line()}")
    failed = [c for c in found if c.level == FAIL]
    if failed:
        raise UserError("; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed)
                        + "; `invoke doctor` shows every check")
    return found


def main(profile: str = "quick", dead: str | None = None, sweeps: str | None = None, tune_host: bool = False,
         results_dir: str | None = None, server_engine: str | None = None, client_engine: str | None = None,
         kernels: str | None = None, accel: str | None = None, kernel_modules: str | None = None,
         say: Callable[[str], None] = print) -> bool:
    """`invoke doctor`: every check for the plan of these flags; whether none failed."""
    from .plan import make_plan
    from .results import RESULTS

    started = time.monotonic()
    plan = make_plan(profile, dead=dead, sweeps=sweeps, kernels=kernels, accel=accel, kernel_modules=kernel_modules)
    found = checks(plan, Path(results_dir) if results_dir else RESULTS, server_engine, client_engine, tune_host)
    return report(found, time.monotonic() - started, say)
