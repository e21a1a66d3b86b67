"""A kernel's modules that the guest needs, found in its lib/modules/<release> folder, decompressed on the host
(busybox's insmod takes plain .ko files) and put in load order: each after the modules it depends on, as the
`depends=` of its .modinfo section says (what depmod would write to modules.dep)."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

from ..errors import UserError
from ..host import machine

# What the guest needs beyond a console, in the cloud kernels all modules: the microvm's virtio-mmio bus, its
# root disk and network card, ext4 for the root disk and the crc32c it asks the crypto API for when it mounts
# one (a module in the rt kernels; crc32c_cryptoapi in 7.x), overlay for dockerd's overlay2. A kernel that has
# one built in (modules.builtin) or lacks the file, as a user-built kernel without modules may, loads the rest.
NEEDED = ("virtio_mmio", "virtio_blk", "virtio_net", "crc32c_generic", "crc32c_cryptoapi", "ext4", "overlay")
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path) -> str:
    """The module's name as the kernel spells it: the file name less its suffix, dashes as underscores."""
    name = path.name
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def module_files(folder: Path) -> dict[str, Path]:
    """{name: file} of every module under the folder's kernel/ tree."""
    return {module_name(p): p for p in sorted((folder / "kernel").rglob("*.ko*")) if p.name.endswith(SUFFIXES)}


def builtin(folder: Path) -> set[str]:
    """The modules the kernel has built in, from its modules.builtin (empty when it has none)."""
    listing = folder / "modules.builtin"
    if not listing.is_file():
        return set()
    return {module_name(Path(line.strip())) for line in listing.read_text().splitlines() if line.strip()}


def decompress(path: Path) -> bytes:
    """The plain .ko of a module file, decompressed here (xz, zstd or gzip)."""
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        machine.ensure_packages(["zstd"], f"decompressing the kernel module {path.name}")
        return subprocess.run([shutil.which("zstd") or "zstd", "-dcq", str(path)], check=True,
                              capture_output=True).stdout
    return path.read_bytes()


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a plain ELF64 .ko as {key: [values]} (e.g. "depends": ["jbd2,mbcache"])."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        return {}
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    info: dict[str, list[str]] = {}
    for name_offset, _type, _flags, _addr, offset, size in sections:
        if ko[names_at + name_offset:].split(b"\0", 1)[0] == b".modinfo":
            for item in ko[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def depends(ko: bytes) -> list[str]:
    """The modules a .ko needs loaded before it."""
    return [name.replace("-", "_") for value in modinfo(ko).get("depends", []) for name in value.split(",") if name]


def load_order(folder: Path, wanted: tuple[str, ...] = NEEDED) -> list[tuple[str, bytes]]:
    """[(name, plain .ko)] of the wanted modules and their dependencies, each after what it depends on; a wanted
    module that is built in, or absent from the folder, is left out."""
    files, inside = module_files(folder), builtin(folder)
    order: list[tuple[str, bytes]] = []
    placed: set[str] = set()

    def place(name: str, chain: tuple[str, ...]) -> None:
        if name in placed or name in inside or name not in files:
            return
        if name in chain:
            raise UserError(f"the modules in {folder} depend on each other in a circle ({' -> '.join(chain)}): "
                            "rebuild them")
        ko = decompress(files[name])
        for dependency in depends(ko):
            place(dependency, (*chain, name))
        placed.add(name)
        order.append((name, ko))

    for name in wanted:
        place(name, ())
    return order
