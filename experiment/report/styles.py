"""How a series' line looks in every figure and legend. Each backend has a colour (Okabe-Ito, safe for the
common colour-vision deficiencies), a marker and a dash pattern, which tell its lines apart in colour and in
greyscale. A server beside ephttpd keeps its backend's colour and takes a marker and dash pattern of its own,
so that ephttpd's epoll and nginx's differ; ephttpd's lines, the study's server, take the backend's own. A run
over several kernels (--kernels) draws each backend's lines in its colour and marker, and each kernel's in a dash
pattern of its own (KERNEL_DASHES, by the kernel's place in --kernels), so that a figure tells the kernels apart
while a backend keeps its colour.

What the backends and servers are is experiment/catalog.py's; this file only dresses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import catalog
from ..catalog import CUSTOM, NGINX, PYTHON, Series


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    linestyle: str | tuple


# By backend name, every backend of the catalog.
BACKENDS: dict[str, Style] = {
    "select": Style("#CC79A7", "s", ":"),
    "poll": Style("#D55E00", "o", "-"),
    "epoll": Style("#0072B2", "^", "--"),
    "epoll-et": Style("#56B4E9", "v", "-."),
    "io_uring": Style("#009E73", "D", (0, (5, 1, 1, 1, 1, 1))),
    "aio-poll": Style("#E69F00", "P", (0, (1, 1))),
    # The same ring as a completion API: a darker shade of io_uring's green, its own marker and dashes.
    "io_uring-recv": Style("#005C45", "<", (0, (4, 1, 4, 1, 1, 1))),
    # pyhttpd's asyncio: epoll underneath, but its own event loop; dark grey keeps it apart from epoll's blue.
    "asyncio": Style("#666666", "h", (0, (2, 1, 2, 3))),
    # A server of the user's own uses whatever it uses: one backend, named for the points.
    "own": Style("#000000", "X", (0, (3, 1, 1, 1))),
}
# A line of a backend or a server the catalog does not know (a run of a later version, say).
UNKNOWN = Style("#000000", "X", (0, (3, 1, 1, 1)))
# The marker and dash pattern of each server beside ephttpd: (marker, linestyle).
SERVERS: dict[str, tuple[str, str | tuple]] = {
    PYTHON: ("h", (0, (2, 1, 2, 3))),
    NGINX: ("*", (0, (6, 2))),
    CUSTOM: ("p", (0, (8, 2, 2, 2))),
}
# The dash pattern of each kernel of a run, in the order of --kernels, named for the figures' captions.
KERNEL_DASHES: tuple[tuple[str, str | tuple], ...] = (
    ("solid", "-"),
    ("dashed", (0, (5, 2))),
    ("dotted", (0, (1, 1.5))),
    ("dash-dotted", (0, (6, 2, 1, 2))),
    ("dash-dot-dotted", (0, (6, 2, 1, 2, 1, 2))),
)


def kernel_dash(kernel: str, kernels: Sequence[str]) -> tuple[str, str | tuple]:
    """The named dash pattern of a kernel's lines, by its place among the run's kernels (round again past
    KERNEL_DASHES)."""
    place = list(kernels).index(kernel) if kernel in kernels else len(kernels)
    return KERNEL_DASHES[place % len(KERNEL_DASHES)]


def style(series: Series, kernels: Sequence[str] = ()) -> dict:
    """matplotlib keyword arguments (color, marker, linestyle) for series' line; a line on one of several
    kernels (kernels: the run's, in order) takes that kernel's dash pattern."""
    own = BACKENDS.get(series.backend, UNKNOWN) if series.server in catalog.SERVERS else UNKNOWN
    marker, linestyle = SERVERS.get(series.server, (own.marker, own.linestyle))
    if series.kernel:
        linestyle = kernel_dash(series.kernel, kernels)[1]
    return {"color": own.colour, "marker": marker, "linestyle": linestyle}


def colour(series: Series) -> str:
    """The colour of series' line, for the page's legends."""
    return style(series)["color"]
