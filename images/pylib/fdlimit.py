"""fdlimit - the open-file limit of epollbench's Python programs (deadconn, pyhttpd), raised as far as it goes.

Standard library only, like the programs: the Dockerfile copies it beside each of them (/usr/local/bin), and
each program run from the source tree finds it here, in images/pylib/.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

# The most descriptors a process can have: what an unlimited hard limit comes to (setrlimit refuses more).
NR_OPEN = "/proc/sys/fs/nr_open"


def raise_fd_limit(complain: Callable[[str], None]) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (to fs.nr_open when the hard one is unlimited); the
    limit we run under. complain(text) says why, when the limit stays where it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError) as error:
            complain(f"cannot read {NR_OPEN} ({error}); keeping RLIMIT_NOFILE at {soft}")
            return soft
    if soft == target:
        return soft
    try:  # an unlimited hard limit comes down to the target too: the kernel refuses one above fs.nr_open
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError) as error:
        complain(f"cannot raise RLIMIT_NOFILE to {target} ({error}); keeping {soft}")
        return soft
    return target
