"""The newc cpio archive the kernel unpacks as its initramfs, written from a list of entries."""

from __future__ import annotations

from dataclasses import dataclass

DIRECTORY, REGULAR, SYMLINK = 0o040000, 0o100000, 0o120000


@dataclass(frozen=True)
class Entry:
    """One member: its path (no leading /), its type and permission bits, and its data (a symlink's target)."""

    path: str
    mode: int
    data: bytes = b""


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 2 if entry.mode & DIRECTORY == DIRECTORY else 1, 0, len(entry.data),
              0, 0, 0, 0, len(name), 0)
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    return header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of the entries, in their order (a folder before what it holds), with its trailer."""
    members = [_member(ino, entry) for ino, entry in enumerate(entries, start=1)]
    return b"".join(members) + _member(0, Entry("TRAILER!!!", 0))


def directory(path: str) -> Entry:
    return Entry(path, DIRECTORY | 0o755)


def file(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, REGULAR | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, SYMLINK | 0o777, target.encode())
