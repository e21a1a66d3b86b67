"""The guest kernel's settings as the preflight reads the host's (host/preflight.read_host_settings), read through
the guest's engine: a container of the run's client image in the guest's network namespace reads its /proc.
The guest boots with the values a plan needs (experiment/data/guest-init.sh) and is never tuned."""

from __future__ import annotations

import json

import docker

from ..host import preflight

# In the container: each sysctl's text (None when the kernel lacks it), MemAvailable and the open-file limit.
READ_SCRIPT = """
import json, resource, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = open("/proc/sys/" + name.replace(".", "/")).read()
    except OSError:
        found[name] = None
meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
print(json.dumps({"sysctls": found, "mem_available_kb": int(meminfo["MemAvailable"].split()[0]),
                  "fd_hard_limit": None if hard == resource.RLIM_INFINITY else hard}))
"""


def read(client: docker.DockerClient, image: str) -> dict:
    """The guest's settings, keyed as read_host_settings keys the host's. Loopback traffic is tracked only when
    the guest has nf_conntrack loaded, which its init never does (its dockerd runs without iptables)."""
    out = client.containers.run(image, ["python3", "-c", READ_SCRIPT, *preflight.SYSCTLS], remove=True,
                                network_mode="host", stdout=True, stderr=False)
    found = json.loads(out.decode())
    settings: dict = {name: None if text is None else preflight.parse_sysctl(text)
                      for name, text in found["sysctls"].items()}
    settings[preflight.FD_HARD_LIMIT] = found["fd_hard_limit"]
    settings[preflight.LOOPBACK_CONNTRACK] = settings["net.netfilter.nf_conntrack_max"] is not None
    settings[preflight.MEM_AVAILABLE] = found["mem_available_kb"] * 1024
    return settings
