"""Kernels in QEMU guests: a Debian (or user-built) kernel boots a guest whose own dockerd the harness measures
through, as it measures through any remote engine.

kernels: a kernel spec (6.1, 6.12-rt, 6.1.176-1, path/to/bzImage, host) to the kernel's packages and files.
apt: the private apt configuration that fetches them from the host's mirror, leaving the host's apt alone.
rootfs: the guest's root disk (Debian with docker.io), the same for every kernel.
initramfs: per kernel, busybox and the kernel's modules, loaded before the root disk is mounted.
accel: KVM or TCG, and why.
qemu: a guest's life: boot, the engine URL, shutdown, and the leftovers of killed runs.
"""
