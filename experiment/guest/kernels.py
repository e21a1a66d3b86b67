"""Kernel specs to kernels: `6.1`, `6.12`, `7.2` (the newest cloud-amd64 build of that version on the host's
Debian mirror), `6.1.176-1` (a Debian version, pinned; a release such as 6.1.0-50-cloud-amd64 pins too), a
`-rt` suffix for the PREEMPT_RT flavour, `path/to/bzImage[:modules folder]` (a kernel built by the user), and
`host` (the running kernel's image in /boot).

resolve() is a pure function of the spec and the parsed Packages indexes ({suite: stanzas}, apt.packages());
fetch() downloads and unpacks what it names into the cache (apt verifies the packages' signatures) and records
the vmlinuz's sha256."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from . import apt, debversion
from .cache import cache_path

FLAVOURS = ("cloud", "rt")
# The package that holds a release's vmlinuz, most wanted first: sid splits it from the modules
# (linux-binary-*, linux-modules-*); bookworm and trixie ship both in linux-image-*.
IMAGE_PACKAGES = ("linux-binary-unsigned-{r}", "linux-image-{r}-unsigned", "linux-binary-{r}", "linux-image-{r}")
# Beside it, when the suite has them at the same version: sid's modules, and its modules.builtin and config.
EXTRA_PACKAGES = ("linux-modules-{r}", "linux-base-{r}")
RELEASE = re.compile(r"^linux-(?:image|binary)-(?:unsigned-)?(?P<release>\d+\.\d+\S*?-(?P<flavour>cloud|rt)-amd64)"
                     r"(?:-unsigned)?$")
VERSION_SPEC = re.compile(r"^(?P<upstream>\d+\.\d+(?:\.\d+)?)(?P<revision>-\d[\w.+~]*)?$")


@dataclass(frozen=True)
class Kernel:
    """A resolved kernel: what it is (release, flavour, where it comes from) and, once fetched, its files."""

    spec: str
    release: str  # its `uname -r`
    flavour: str  # cloud, rt, custom or host
    suite: str | None = None
    version: str | None = None  # the Debian version
    packages: tuple[str, ...] = ()  # the Debian packages that hold its image and modules
    vmlinuz: Path | None = None
    modules: Path | None = None  # its lib/modules/<release> folder; None: the kernel has no modules here
    sha256: str | None = None  # of the vmlinuz
    debs: dict[str, str] = field(default_factory=dict, compare=False)  # .deb file name: its sha256

    def about(self) -> str:
        """What it is, in a few words: its release and where it comes from."""
        if self.flavour == "host":
            return f"{self.release} (the running kernel, {self.vmlinuz})"
        if self.flavour == "custom":
            return f"{self.release} (a kernel file, {self.vmlinuz})"
        return f"{self.release} (Debian {self.version}, {self.suite})"

    def facts(self) -> dict:
        """What a run records of the kernel."""
        return {"spec": self.spec, "release": self.release, "flavour": self.flavour, "suite": self.suite,
                "version": self.version, "packages": list(self.packages), "vmlinuz": str(self.vmlinuz or ""),
                "vmlinuz_sha256": self.sha256, "debs_sha256": dict(self.debs)}


def candidates(index: dict[str, list[dict[str, str]]]) -> list[Kernel]:
    """Every cloud and rt kernel the indexes carry, one per suite, release and version, oldest first."""
    found = []
    for suite, stanzas in index.items():
        names = {(s["Package"], s["Version"]) for s in stanzas}
        releases = {(m["release"], m["flavour"], s["Version"]) for s in stanzas
                    if (m := RELEASE.match(s["Package"]))}
        for release, flavour, version in sorted(releases):
            image = next(p.format(r=release) for p in IMAGE_PACKAGES if (p.format(r=release), version) in names)
            extras = tuple(p.format(r=release) for p in EXTRA_PACKAGES if (p.format(r=release), version) in names)
            packages = (image, *extras)
            found.append(Kernel(spec="", release=release, flavour=flavour, suite=suite, version=version,
                                packages=packages))
    return sorted(found, key=lambda k: debversion.sort_key(k.version or ""))


def _matches(spec: str, kernel: Kernel) -> bool:
    """Whether a Debian kernel is one the (flavour-less) spec names: by version prefix, Debian version,
    release or package name."""
    if spec in (kernel.version, kernel.release) or spec in kernel.packages:
        return True
    m = VERSION_SPEC.match(spec)
    if not m or m["revision"]:
        return False
    upstream = debversion.split(kernel.version or "")[1]
    return upstream == m["upstream"] or upstream.startswith(m["upstream"] + ".")


def resolve(spec: str, index: dict[str, list[dict[str, str]]]) -> Kernel:
    """The kernel a spec names: host, a path, or the newest Debian build that matches (see the module's doc).
    An unknown one is a UserError listing the versions the mirror has."""
    spec = spec.strip()
    if spec == "host":
        return host_kernel()
    if not is_debian(spec):
        return custom_kernel(spec)
    base, flavour = (spec[:-3], "rt") if spec.endswith("-rt") else (spec, "cloud")
    if RELEASE.match(f"linux-image-{base}"):  # a release names its flavour itself
        flavour = RELEASE.match(f"linux-image-{base}")["flavour"]  # type: ignore[index]
    found = [k for k in candidates(index) if k.flavour == flavour and _matches(base, k)]
    if not found:
        raise UserError(f"no Debian {flavour} kernel {base} on the mirror: it has {available(index, flavour)}; "
                        "give one of these (a -rt suffix for PREEMPT_RT), a path to a bzImage, or host")
    return replace(found[-1], spec=spec)


def is_debian(spec: str) -> bool:
    """Whether a spec names a Debian build, resolved against the mirror: not host, nor a kernel file."""
    return not (spec.strip() == "host" or "/" in spec or Path(spec.split(":")[0]).is_file())


def cached(spec: str, index: dict[str, list[dict[str, str]]] | None) -> Kernel | None:
    """The kernel a spec names as far as the cache tells, fetching nothing: host or a kernel file with its files;
    a Debian build resolved against index (the cached lists; None: not fetched yet, and so is the result), with
    its files when fetch() has unpacked them. An unknown one is resolve()'s UserError."""
    if not is_debian(spec):
        return resolve(spec, {})
    if index is None:
        return None
    kernel = resolve(spec, index)
    return unpacked(kernel) or kernel


def available(index: dict[str, list[dict[str, str]]], flavour: str = "cloud") -> str:
    """The versions of a flavour the indexes carry, by suite: "6.1.170-3, 6.1.176-1 (bookworm), ..."."""
    by_suite: dict[str, list[str]] = {}
    for kernel in candidates(index):
        if kernel.flavour == flavour and kernel.version not in by_suite.get(kernel.suite or "", []):
            by_suite.setdefault(kernel.suite or "", []).append(kernel.version or "")
    return "; ".join(f"{', '.join(versions)} ({suite})" for suite, versions in by_suite.items()) or "none"


def host_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> Kernel:
    """The running kernel, from /boot/vmlinuz-$(uname -r); a UserError when /boot has no image for it."""
    release = os.uname().release
    vmlinuz = boot / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        raise UserError(f"the running kernel {release} has no image in {boot} ({vmlinuz} is missing): give a "
                        "Debian version such as 6.1, or a path to its bzImage")
    modules = modules_root / release
    return Kernel(spec="host", release=release, flavour="host", vmlinuz=vmlinuz,
                  modules=modules if modules.is_dir() else None, sha256=sha256(vmlinuz))


def custom_kernel(spec: str) -> Kernel:
    """A user-built kernel: path/to/bzImage, optionally :path/to/modules (its lib/modules/<release> folder, or a
    root holding lib/modules/<release>); the release is read from the bzImage's header."""
    image_text, _, modules_text = spec.partition(":")
    image = Path(image_text).expanduser()
    if not image.is_file():
        raise UserError(f"kernel image {image} does not exist: give the path of a bzImage (arch/x86/boot/bzImage)")
    release = bzimage_release(image)
    modules = None
    if modules_text:
        folder = Path(modules_text).expanduser()
        modules = next((p for p in (folder / "lib/modules" / release, folder) if (p / "kernel").is_dir()), None)
        if modules is None:
            raise UserError(f"{folder} holds no modules of {release} (no kernel/ folder in it or in "
                            f"lib/modules/{release}): give the folder `make modules_install INSTALL_MOD_PATH=` made")
    return Kernel(spec=spec, release=release, flavour="custom", vmlinuz=image.resolve(),
                  modules=modules.resolve() if modules else None, sha256=sha256(image))


def bzimage_release(image: Path) -> str:
    """The release (`uname -r`) an x86 bzImage's setup header names; a UserError when it is no bzImage."""
    with open(image, "rb") as f:
        head = f.read(0x10000)
    if head[0x202:0x206] != b"HdrS":
        raise UserError(f"{image} is not an x86 bzImage (no HdrS setup header): give arch/x86/boot/bzImage")
    offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    return head[offset:offset + 256].split(b"\0")[0].split(b" ")[0].decode(errors="replace")


def sha256(path: Path) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find(spec: str, say=print) -> Kernel:
    """The kernel a spec names, fetched: resolved against the private apt lists (updated when missing or a
    day old, and once more on a miss), its packages downloaded and unpacked into the cache."""
    if not is_debian(spec):
        return resolve(spec, {})
    apt.update(say=say)
    try:
        kernel = resolve(spec, apt.packages())
    except UserError:
        apt.update(force=True, say=say)
        kernel = resolve(spec, apt.packages())
    return fetch(kernel, say)


def fetch(kernel: Kernel, say=print) -> Kernel:
    """A resolved Debian kernel with its files: the packages downloaded (apt checks them against the signed
    indexes) and unpacked once into the cache, the vmlinuz and modules found, their sha256 recorded."""
    folder = _folder(kernel)
    folder.mkdir(parents=True, exist_ok=True)
    debs = {}
    for package in kernel.packages:
        deb = apt.download(package, kernel.version or "")
        debs[deb.name] = sha256(deb)
        if not (folder / f".unpacked-{deb.name}").exists():
            say(f"unpacking {deb.name}")
            apt.extract(deb, folder)
            (folder / f".unpacked-{deb.name}").touch()
    found = unpacked(kernel)
    if found is None:  # every package is unpacked by now: they hold no vmlinuz
        raise UserError(f"the packages {', '.join(kernel.packages)} hold no vmlinuz for {kernel.release}: "
                        f"remove {folder} and try again")
    return replace(found, debs=debs)


def unpacked(kernel: Kernel) -> Kernel | None:
    """A resolved Debian kernel with the vmlinuz and modules fetch() unpacked into the cache, None until it has
    unpacked every package (looking fetches and creates nothing: the dry run and doctor ask)."""
    folder, version = _folder(kernel), kernel.version or ""
    if not all(any(folder.glob(f".unpacked-{apt.deb_pattern(p, version)}")) for p in kernel.packages):
        return None
    vmlinuz = next((p for p in (folder / "boot" / f"vmlinuz-{kernel.release}",
                                folder / "usr/lib/modules" / kernel.release / "vmlinuz",
                                folder / "usr/lib/modules" / kernel.release / "vmlinuz.unsigned",
                                folder / "lib/modules" / kernel.release / "vmlinuz") if p.is_file()), None)
    if vmlinuz is None:
        return None
    modules = next((p for p in (folder / "lib/modules" / kernel.release, folder / "usr/lib/modules" /
                                kernel.release) if (p / "kernel").is_dir()), None)
    return replace(kernel, vmlinuz=vmlinuz, modules=modules, sha256=sha256(vmlinuz))


def _folder(kernel: Kernel) -> Path:
    """Where fetch() unpacks a Debian kernel's packages."""
    return cache_path("kernels", f"{kernel.release}_{kernel.version}")
