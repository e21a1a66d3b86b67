"""Where the server's CPU goes: each `perf record -e cpu-clock -g` sample folded into one category by its call
chain, and the chains saved in the collapsed format flame-graph tools read ("a;b;c N").

The categories (CATEGORIES, in the order a report stacks them):
  readiness_scan  the event mechanism's own work: poll/select (do_sys_poll, do_select and each file's ->poll:
                  sock_poll, tcp_poll), epoll (ep_poll, ep_send_events, ep_item_poll, and epoll_ctl's
                  registration), io_uring's and AIO's poll paths (poll arming, completion task work,
                  io_getevents)
  wait_sched      the task's own trips through the scheduler: blocking in a wait, being preempted
  tcp_receive     receiving: recv/read on a socket, and network receive run in an interrupt's softirq
  tcp_send        sending: send/sendmsg/write on a socket, loopback delivery included (below)
  syscall_entry   the system call entry and exit code alone (mitigations, seccomp filters, tracing hooks)
  user            the sample was taken in user space
  other           anything else in the kernel (accept, close, page faults, timers, signals)

Which frame decides (classify()):
  1. Only kernel frames count (addresses in the upper half); a chain without one is `user`.
  2. The chain is cut at its innermost hardware-interrupt entry (asm_sysvec_*, asm_common_interrupt, ...):
     the frames from there to the leaf are what the CPU was doing when sampled, and an interrupt that
     arrived during a system call is not that system call's work.
  3. If any of those frames is the scheduler's (schedule, __schedule, finish_task_switch, ...), the
     sample is wait_sched: a wait that blocks is waiting, whatever system call it is in.
  4. Otherwise the outermost frame, the one nearest the system call or interrupt entry, that names a
     category decides. So a loopback send, which runs the peer's TCP receive (tcp_v4_rcv in the sender's
     softirq) and the wakeup callbacks of whoever waits on the peer (ep_poll_callback, pollwake) inside
     the sender's tcp_sendmsg, counts all of it as tcp_send: that is what a send costs the server on
     loopback. Network receive in an interrupt's softirq (net_rx_action with no system call frame
     around it) counts as tcp_receive.
  5. Nothing names a category: syscall_entry when every frame is entry or exit code, else other.

Frame names are matched after stripping the compiler's suffixes (".isra.0", ".constprop.0", ".cold") and
perf's "+0x..." offset.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

READINESS, WAIT, RECEIVE, SEND, ENTRY, USER, OTHER = (
    "readiness_scan", "wait_sched", "tcp_receive", "tcp_send", "syscall_entry", "user", "other")
CATEGORIES = (READINESS, WAIT, RECEIVE, SEND, ENTRY, USER, OTHER)

# Frames that start a hardware interrupt's (or an NMI's) context: the chain is cut at the innermost one.
INTERRUPT_ENTRY_PREFIXES = ("asm_sysvec_", "asm_common_interrupt", "asm_spurious_interrupt", "asm_exc_nmi",
                            "asm_exc_machine_check")
# The scheduler: any of these in the sample's context makes it wait_sched.
SCHEDULER = frozenset({
    "schedule", "__schedule", "schedule_idle", "schedule_timeout", "schedule_hrtimeout",
    "schedule_hrtimeout_range", "schedule_hrtimeout_range_clock", "poll_schedule_timeout", "io_schedule",
    "preempt_schedule", "preempt_schedule_irq", "preempt_schedule_common", "preempt_schedule_notrace",
    "finish_task_switch", "__switch_to", "__switch_to_asm", "do_sched_yield", "__x64_sys_sched_yield",
})
# Frames that name a category; the outermost one in the context decides.
NAMED = {
    READINESS: frozenset({
        # poll and select
        "__x64_sys_poll", "__x64_sys_ppoll", "__do_sys_poll", "__do_sys_ppoll", "do_sys_poll", "do_poll",
        "__x64_sys_select", "__x64_sys_pselect6", "kern_select", "do_pselect", "core_sys_select", "do_select",
        # epoll
        "__x64_sys_epoll_wait", "__x64_sys_epoll_pwait", "__x64_sys_epoll_pwait2", "do_epoll_wait",
        "do_epoll_pwait", "ep_poll", "ep_send_events", "ep_item_poll", "ep_done_scan", "ep_start_scan",
        "__x64_sys_epoll_ctl", "do_epoll_ctl", "ep_insert", "ep_modify", "ep_remove",
        # io_uring (ephttpd's io_uring backend waits with poll requests)
        "__x64_sys_io_uring_enter", "__do_sys_io_uring_enter", "io_submit_sqes", "io_cqring_wait",
        "io_poll_add", "io_arm_poll_handler", "io_poll_task_func", "io_poll_check_events", "io_poll_wake",
        "tctx_task_work", "io_handle_tw_list",
        # Linux AIO (IOCB_CMD_POLL, io_getevents)
        "__x64_sys_io_submit", "__x64_sys_io_getevents", "__x64_sys_io_pgetevents", "do_io_getevents",
        "read_events", "aio_poll", "aio_poll_complete_work", "aio_poll_wake", "io_submit_one",
        # a file's ->poll, when reached outside the calls above
        "sock_poll", "tcp_poll", "vfs_poll", "pipe_poll",
    }),
    RECEIVE: frozenset({
        "__x64_sys_recvfrom", "__x64_sys_recvmsg", "__x64_sys_recvmmsg", "__sys_recvfrom", "__sys_recvmsg",
        "___sys_recvmsg", "do_recvmmsg", "sock_recvmsg", "sock_read_iter", "tcp_recvmsg", "inet_recvmsg",
        "net_rx_action", "__napi_poll", "process_backlog", "ip_rcv", "ip_local_deliver", "tcp_v4_rcv",
        "tcp_v6_rcv", "tcp_rcv_established",
    }),
    SEND: frozenset({
        "__x64_sys_sendto", "__x64_sys_sendmsg", "__x64_sys_sendmmsg", "__sys_sendto", "__sys_sendmsg",
        "___sys_sendmsg", "__sys_sendmmsg", "sock_sendmsg", "__sock_sendmsg", "sock_write_iter", "tcp_sendmsg",
        "tcp_sendmsg_locked", "inet_sendmsg", "tcp_push", "__tcp_push_pending_frames", "tcp_write_xmit",
    }),
}
_OWNER = {name: category for category, names in NAMED.items() for name in names}
# The system call entry and exit code: syscall_entry only when nothing else is in the context.
ENTRY_FRAMES = frozenset({
    "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe", "entry_SYSCALL_64_safe_stack", "entry_SYSRETQ_unsafe_stack",
    "entry_SYSRETQ_end", "do_syscall_64", "x64_sys_call", "syscall_enter_from_user_mode",
    "syscall_exit_to_user_mode", "syscall_exit_to_user_mode_prepare", "exit_to_user_mode_prepare",
    "syscall_exit_work", "syscall_trace_enter", "__secure_computing", "__seccomp_filter", "seccomp_run_filters",
    "bpf_prog_run_pin_on_cpu", "clear_bhb_loop", "__x86_return_thunk", "srso_return_thunk", "srso_alias_return_thunk",
    "retbleed_return_thunk", "__x86_indirect_thunk_array", "fpregs_assert_state_consistent",
    "switch_fpu_return", "restore_fpregs_from_fpstate", "trace_sys_enter", "trace_sys_exit",
    "perf_syscall_enter", "perf_syscall_exit",
})
_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\d+)?)+$")
# The upper half of the address space: the kernel's frames on x86_64 and arm64.
KERNEL_START = 0xFFFF800000000000


def frame_name(symbol: str) -> str:
    """A symbol as perf prints it, without "+0x12" and the compiler's ".isra.0"-like suffixes."""
    return _SUFFIX.sub("", symbol.split("+0x", 1)[0].strip())


@dataclass(frozen=True)
class Frame:
    address: int
    symbol: str  # as perf printed it, "[unknown]" when it could not resolve one

    @property
    def kernel(self) -> bool:
        return self.address >= KERNEL_START

    @property
    def name(self) -> str:
        return frame_name(self.symbol)


@dataclass(frozen=True)
class Sample:
    comm: str
    frames: tuple[Frame, ...]  # leaf first, as perf script prints them


def classify(frames: Iterable[Frame]) -> str:
    """The one category of a sample whose call chain is frames (leaf first): the rules in this module's
    docstring."""
    kernel = [f.name for f in frames if f.kernel]
    if not kernel:
        return USER
    # Leaf first: the innermost interrupt entry is the first one met.
    for i, name in enumerate(kernel):
        if name.startswith(INTERRUPT_ENTRY_PREFIXES):
            kernel = kernel[:i + 1]
            break
    if any(name in SCHEDULER for name in kernel):
        return WAIT
    for name in reversed(kernel):  # outermost first
        if name in _OWNER:
            return _OWNER[name]
    if all(name in ENTRY_FRAMES for name in kernel):
        return ENTRY
    return OTHER


_FRAME = re.compile(r"^\s+([0-9a-fA-F]+)\s+(.*?)(?:\s+\(([^()]*)\))?$")


def parse_script(lines: Iterable[str]) -> Iterator[Sample]:
    """The samples of `perf script` output (a header line per sample, then one indented line per frame, leaf
    first, then a blank line)."""
    comm: str | None = None
    frames: list[Frame] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if comm is not None:
                yield Sample(comm, tuple(frames))
            comm, frames = None, []
        elif line[0].isspace():
            match = _FRAME.match(line)
            if match and comm is not None:
                frames.append(Frame(int(match.group(1), 16), match.group(2) or "[unknown]"))
        else:
            if comm is not None:
                yield Sample(comm, tuple(frames))
            comm, frames = _header_comm(line), []
    if comm is not None:
        yield Sample(comm, tuple(frames))


def _header_comm(line: str) -> str:
    """The command name of a sample header "comm pid/tid time: period event:" (a comm may hold spaces)."""
    match = re.match(r"^\s*(.*?)\s+\d+(?:/\d+)?(?:\s|:|$)", line)
    return match.group(1) if match else line.split()[0]


def collapsed_key(sample: Sample) -> str:
    """The sample's chain in the collapsed format: the command, then the frames root first, ";"-separated
    (";" inside a C++ symbol is replaced, as stackcollapse-perf.pl does)."""
    names = [sample.comm] + [f.name.replace(";", ":") or "[unknown]" for f in reversed(sample.frames)]
    return ";".join(name.replace(" ", "_") if i == 0 else name for i, name in enumerate(names))


@dataclass
class Folded:
    """The samples of one profile, counted by category and by chain."""

    categories: Counter[str]
    stacks: Counter[str]

    @property
    def samples(self) -> int:
        return sum(self.categories.values())

    def shares(self) -> dict[str, float]:
        """category -> fraction of the samples, every category present, summing to 1 (empty: all 0)."""
        total = self.samples
        if not total:
            return {c: 0.0 for c in CATEGORIES}
        return {c: self.categories.get(c, 0) / total for c in CATEGORIES}

    def write_collapsed(self, path: Path) -> Path:
        """The chains, "frame;frame;... count" per line, most frequent first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{key} {n}\n" for key, n in self.stacks.most_common()))
        return path


def fold(samples: Iterable[Sample]) -> Folded:
    categories: Counter[str] = Counter()
    stacks: Counter[str] = Counter()
    for sample in samples:
        categories[classify(sample.frames)] += 1
        stacks[collapsed_key(sample)] += 1
    return Folded(categories, stacks)
