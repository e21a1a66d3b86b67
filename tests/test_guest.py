"""Kernels in QEMU guests (experiment/guest/): kernel specs resolved against a recorded excerpt of the mirror's
Packages indexes, the initramfs's pieces, the accelerator's choice with a KVM that fails, the leftovers of a run
that is gone; and, on the host, guests that never come up and one real TCG-or-KVM boot whose dockerd runs a
container."""

from __future__ import annotations

import lzma
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import guestcache
import pytest
from guestcache import our_qemus

from experiment.errors import UserError
from experiment.guest import (
    accel,
    apt,
    cache,
    cpio,
    debversion,
    initramfs,
    kernels,
    leftovers,
    modules,
    qemu,
)

REAL_GUEST = "boots a QEMU guest: installs qemu-system-x86, fetches a Debian kernel, bootstraps the root disk"


@pytest.fixture(scope="module")
def index():
    return guestcache.recorded_index()


def test_a_version_names_the_newest_cloud_build_of_it_in_the_suite_that_carries_it(index):
    six_one = kernels.resolve("6.1", index)
    assert (six_one.release, six_one.version, six_one.suite, six_one.flavour) == \
        ("6.1.0-50-cloud-amd64", "6.1.176-1", "bookworm", "cloud")
    assert six_one.packages == ("linux-image-6.1.0-50-cloud-amd64-unsigned",)
    assert kernels.resolve("6.12", index).release == "6.12.117+deb13-cloud-amd64"
    sid = kernels.resolve("7.2", index)
    assert (sid.suite, sid.version) == ("sid", "7.2.13-1")
    assert sid.packages == ("linux-binary-unsigned-7.2.13+deb14-cloud-amd64", "linux-modules-7.2.13+deb14-cloud-amd64",
                            "linux-base-7.2.13+deb14-cloud-amd64")


def test_rt_picks_the_preempt_rt_flavour(index):
    rt = kernels.resolve("6.1-rt", index)
    assert (rt.release, rt.flavour) == ("6.1.0-50-rt-amd64", "rt")
    assert kernels.resolve("7.2-rt", index).packages[0] == "linux-binary-unsigned-7.2.13+deb14-rt-amd64"


def test_a_debian_version_or_a_release_pins_the_build(index):
    assert kernels.resolve("6.1.170-3", index).release == "6.1.0-47-cloud-amd64"
    assert kernels.resolve("6.1.0-47-cloud-amd64", index).version == "6.1.170-3"
    assert kernels.resolve("6.12.107", index).version == "6.12.107-1"
    assert kernels.resolve("6.1.170-3-rt", index).release == "6.1.0-47-rt-amd64"


def test_an_unknown_version_is_one_line_listing_what_the_mirror_has(index):
    with pytest.raises(UserError) as error:
        kernels.resolve("6.5", index)
    message = str(error.value)
    assert "\n" not in message and "no Debian cloud kernel 6.5" in message
    assert "6.1.170-3, 6.1.176-1 (bookworm)" in message and "7.2.13-1 (sid)" in message
    with pytest.raises(UserError, match="6.1.176-1"):
        kernels.resolve("6.1.176-9", index)


def test_the_cache_is_looked_at_without_fetching_or_laying_out_anything(guest_cache):
    assert apt.cached_packages() is None and not guest_cache.exists()
    guestcache.write_lists()
    index = apt.cached_packages()
    assert index == guestcache.recorded_index()
    six_one = kernels.resolve("6.1", index)
    assert kernels.unpacked(six_one) is None
    vmlinuz = guestcache.unpack(six_one)
    found = kernels.unpacked(six_one)
    assert found is not None and (found.vmlinuz, found.sha256) == (vmlinuz, kernels.sha256(vmlinuz))
    assert found.modules == vmlinuz.parent.parent / "lib/modules" / six_one.release
    sid = kernels.resolve("7.2", index)
    guestcache.unpack(sid)
    next(vmlinuz.parent.parent.parent.glob(f"7.2*/.unpacked-{sid.packages[1]}_*")).unlink()
    assert kernels.unpacked(sid) is None, "one of its packages is not unpacked yet"
    assert initramfs.path_of(found).parent == guest_cache / "initramfs"
    assert sorted(p.name for p in guest_cache.iterdir()) == ["apt", "kernels"]


def fake_bzimage(path: Path, release: str) -> Path:
    """A file with an x86 setup header whose kernel_version points at "<release> (someone@somewhere) #1"."""
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x800 - 0x200).to_bytes(2, "little")
    text = f"{release} (someone@somewhere) #1 SMP".encode() + b"\0"
    head[0x800:0x800 + len(text)] = text
    path.write_bytes(bytes(head))
    return path


def test_a_path_is_a_user_built_kernel_its_release_read_from_its_header(tmp_path):
    image = fake_bzimage(tmp_path / "bzImage", "6.15.0-mine")
    kernel = kernels.resolve(str(image), {})
    assert (kernel.release, kernel.flavour, kernel.vmlinuz, kernel.modules) == \
        ("6.15.0-mine", "custom", image, None)
    (tmp_path / "mods/lib/modules/6.15.0-mine/kernel").mkdir(parents=True)
    with_modules = kernels.resolve(f"{image}:{tmp_path / 'mods'}", {})
    assert with_modules.modules == tmp_path / "mods/lib/modules/6.15.0-mine"
    with pytest.raises(UserError, match="holds no modules of 6.15.0-mine"):
        kernels.resolve(f"{image}:{tmp_path}", {})
    (tmp_path / "notakernel").write_bytes(b"\0" * 0x1000)
    with pytest.raises(UserError, match="not an x86 bzImage"):
        kernels.resolve(str(tmp_path / "notakernel"), {})


def test_host_without_an_image_in_boot_says_so(tmp_path):
    with pytest.raises(UserError, match=f"running kernel {os.uname().release} has no image in {tmp_path}"):
        kernels.host_kernel(boot=tmp_path)
    image = fake_bzimage(tmp_path / f"vmlinuz-{os.uname().release}", os.uname().release)
    kernel = kernels.host_kernel(boot=tmp_path, modules_root=tmp_path / "none")
    assert (kernel.vmlinuz, kernel.flavour, kernel.modules) == (image, "host", None)


def test_debian_versions_order_as_dpkg_orders_them():
    ordered = ["1.0~rc1-1", "1.0-1", "1.0a-1", "1.0+b1-1", "2.3-1", "2.30-1", "1:0.1-1"]
    assert sorted(reversed(ordered), key=debversion.sort_key) == ordered
    assert debversion.compare("6.12.117-1", "6.12.107-1") == 1 and debversion.compare("1.0", "1.0-0") == 0


def fake_ko(depends: str) -> bytes:
    """A minimal ELF64 object with a .modinfo section saying depends=... (what modules.modinfo reads)."""
    modinfo = f"license=GPL\0depends={depends}\0name=x\0".encode()
    names = b"\0.modinfo\0.shstrtab\0"
    data_at = 0x40
    names_at = data_at + len(modinfo)
    sections_at = names_at + len(names)
    header = bytearray(0x40)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x28, sections_at)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    section = struct.Struct("<IIQQQQIIQQ")  # name, type, flags, address, offset, size, link, info, align, entsize
    table = section.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0) + \
        section.pack(1, 1, 0, 0, data_at, len(modinfo), 0, 0, 1, 0) + \
        section.pack(10, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    return bytes(header) + modinfo + names + table


def test_modules_load_after_what_they_depend_on_decompressed_and_builtins_left_out(tmp_path):
    kernel_tree = tmp_path / "kernel" / "drivers"
    kernel_tree.mkdir(parents=True)
    (kernel_tree / "virtio.ko").write_bytes(fake_ko(""))
    (kernel_tree / "virtio_ring.ko.xz").write_bytes(lzma.compress(fake_ko("virtio")))
    (kernel_tree / "virtio_mmio.ko").write_bytes(fake_ko("virtio,virtio_ring"))
    (kernel_tree / "virtio-blk.ko").write_bytes(fake_ko("virtio_ring"))
    (tmp_path / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    order = modules.load_order(tmp_path, ("virtio_mmio", "virtio_blk", "ext4", "overlay"))
    assert [name for name, _ko in order] == ["virtio", "virtio_ring", "virtio_mmio", "virtio_blk"]
    assert modules.depends(order[1][1]) == ["virtio"]  # decompressed: the ELF is readable


def test_the_initramfs_archive_is_newc_with_aligned_members_and_a_trailer():
    data = cpio.archive([cpio.directory("bin"), cpio.file("init", b"#!/bin/sh\n", executable=True),
                         cpio.symlink("bin/sh", "busybox")])
    assert data.startswith(b"070701") and data.count(b"070701") == 4
    assert b"TRAILER!!!\0" in data and len(data) % 4 == 0
    second = data.index(b"070701", 6)
    assert second % 4 == 0 and int(data[second + 14:second + 22], 16) == 0o100755


@pytest.fixture
def failing_kvm(tmp_path, monkeypatch):
    """A QEMU that fails under KVM as nested virtualization does here, and a /dev/kvm it may open."""
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *'-accel kvm'*) echo 'qemu-system-x86_64: error: KVM internal error. "
                    "Suberror: 1' >&2; echo 'emulation failure' >&2; exit 1;; esac\nexit 3\n")
    fake.chmod(0o755)
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setenv("EPOLLBENCH_QEMU", str(fake))
    monkeypatch.setattr(accel, "KVM_DEVICE", str(device))
    monkeypatch.setattr(accel, "_probed", {})
    return tmp_path


def test_auto_falls_back_to_tcg_with_the_kvm_probes_error_and_kvm_refuses_in_one_line(failing_kvm):
    chosen = accel.choose("auto", failing_kvm / "vmlinuz", failing_kvm / "initrd")
    assert chosen == accel.Accelerator("tcg", "KVM failed: KVM internal error. Suberror: 1")
    assert chosen.qemu_args() == ["-accel", "tcg", "-cpu", "max"]
    with pytest.raises(UserError) as error:
        accel.choose("kvm", failing_kvm / "vmlinuz", failing_kvm / "initrd")
    assert str(error.value) == ("KVM cannot run the guest (KVM internal error. Suberror: 1): use --accel tcg "
                                "(emulated, several times slower) or auto")
    assert accel.choose("tcg", Path("x"), Path("y")).reason == "asked for (--accel tcg)"
    with pytest.raises(UserError, match="give auto, kvm or tcg"):
        accel.choose("hvf", Path("x"), Path("y"))


def test_a_guest_whose_owner_is_gone_is_a_leftover_and_is_stopped():
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    env = dict(os.environ, **{leftovers.OWNER_ENV: leftovers.owner_identity(dead_owner.pid),
                              leftovers.FOLDER_ENV: "/tmp/a-run"})
    fake = guestcache.reaped(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-name",
                                               "epollbench-guest,process=epollbench-guest-test-leftover"], env=env))
    owned = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-name",
                              "epollbench-guest,process=epollbench-guest-test-owned"],
                             env=dict(os.environ, **{leftovers.OWNER_ENV: leftovers.owner_identity(os.getpid())}))
    try:
        time.sleep(0.2)
        found = {guest.label: guest for guest in leftovers.leftover_guests()}
        assert "test-leftover" in found and "test-owned" not in found
        assert found["test-leftover"].folder == "/tmp/a-run" and found["test-leftover"].pid == fake.pid
        said: list[str] = []
        stopped = leftovers.stop_leftover_guests(said.append, grace_s=5)
        assert fake.pid in {guest.pid for guest in stopped} and fake.wait(5) == -signal.SIGTERM
        assert any("test-leftover" in line for line in said) and owned.poll() is None
    finally:
        for process in (fake, owned):
            process.kill()
            process.wait()


def test_console_facts_are_read_from_the_console():
    text = "boot\r\nepollbench-fact kernel=6.1.0-50-cloud-amd64\r\nepollbench-fact vulnerability.mds=Not affected\n"
    assert qemu.console_facts(text) == {"kernel": "6.1.0-50-cloud-amd64", "vulnerability.mds": "Not affected"}


@pytest.fixture(scope="module")
def bookworm_kernel():
    return kernels.find("6.1")


@pytest.mark.needs_host(REAL_GUEST)
def test_a_guest_whose_init_fails_ends_at_once_with_the_consoles_last_lines(bookworm_kernel, tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError) as error:  # loglevel=7: the kernel's info lines too
        qemu.boot(bookworm_kernel, tmp_path, vcpus=1, memory_mb=512, accelerator="tcg", timeout_s=120,
                  extra_cmdline=("init=/bin/false", "loglevel=7"))
    assert time.monotonic() - started < 60
    message = str(error.value)
    assert "\n" not in message and "stopped before its dockerd answered" in message
    assert "console:" in message and str(tmp_path / "guest-6.1.0-50-cloud-amd64.console.log") in message
    console = (tmp_path / "guest-6.1.0-50-cloud-amd64.console.log").read_text(errors="replace")
    # The guest of one vCPU (pipetest UP's in a run over kernels, plan.guest_vcpus) is a kernel that sees one CPU
    assert "smp: Brought up 1 node, 1 CPU" in console and our_qemus() == []


@pytest.mark.needs_host(REAL_GUEST)
def test_a_guest_that_never_answers_fails_within_its_timeout(bookworm_kernel, tmp_path):
    # The initramfs speaks within seconds (a guest whose init fails ends in about 5 s), then the init never does
    started = time.monotonic()
    with pytest.raises(UserError, match="did not answer within 12 s: console: .*epollbench-initramfs"):
        qemu.boot(bookworm_kernel, tmp_path, vcpus=1, memory_mb=512, accelerator="tcg", timeout_s=12,
                  extra_cmdline=("init=/usr/bin/tail",))
    assert time.monotonic() - started < 60 and our_qemus() == []


def test_the_cache_keeps_the_most_recently_used_disks(tmp_path):
    disks = []
    for age, name in enumerate(["a", "b", "c", "d"]):
        disk = tmp_path / f"{name}.ext4"
        disk.write_text(name)
        os.utime(disk, (1000 + age, 1000 + age))
        disks.append(disk)
    removed = cache.prune(tmp_path, "*.ext4", 2, disks[0])  # a, the oldest, is in use now
    assert sorted(p.name for p in removed) == ["b.ext4", "c.ext4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ext4", "d.ext4"]
