#!/bin/sh
# epollbench's guest init (/sbin/epollbench-init in the guest's root disk, experiment/guest/rootfs.py): the QEMU
# guest's PID 1 once the initramfs has loaded the kernel's modules. It mounts what dockerd needs, sets the
# benchmark's sysctls, brings up the network of QEMU's user networking, prints the guest's facts on the console
# (lines "epollbench-fact NAME=VALUE"), starts dockerd on tcp://0.0.0.0:2375 and says READY once it answers.
# nf_conntrack is never loaded: with --iptables=false nothing asks for it.
if [ "$$" = 1 ]; then
    exec /usr/bin/docker-init -- /bin/sh "$0"  # tini as PID 1 reaps the orphans; this script runs under it
fi
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "epollbench-guest: $*" > /dev/console; }
fact() { echo "epollbench-fact $1=$2" > /dev/console; }
stop() { say "$*"; tail -n 5 /var/log/dockerd.log > /dev/console 2>&1; echo b > /proc/sysrq-trigger; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo 1 > /proc/sys/kernel/sysrq
# A disk of images (experiment/guest/imagedisk.py), when the guest has one: dockerd's data root, images in place.
for disk in /dev/vd?; do
    [ "$(blkid -s LABEL -o value "$disk")" = epollbench-imgs ] || continue
    mkdir -p /var/lib/docker
    mount -t ext4 "$disk" /var/lib/docker && fact images_disk "$disk" || say "cannot mount the images disk $disk"
done
echo epollbench-guest > /proc/sys/kernel/hostname

sysctl -q -w net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
    "net.ipv4.ip_local_port_range=1024 65535" fs.file-max=4194304 fs.nr_open=1048576 || say "a sysctl failed"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 || say "no eth0"

fact kernel "$(uname -r)"
fact cmdline "$(cat /proc/cmdline)"
fact modules "$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
fact clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
fact cpus "$(nproc)"
fact memory_kb "$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
for file in /sys/devices/system/cpu/vulnerabilities/*; do fact "vulnerability.${file##*/}" "$(cat "$file")"; done

ulimit -n 1048576
dockerd -H tcp://0.0.0.0:2375 -H unix:///var/run/docker.sock --storage-driver overlay2 --bridge none \
    --iptables=false --ip-masq=false --userland-proxy=false --log-level warn > /var/log/dockerd.log 2>&1 &
dockerd=$!
until docker version > /dev/null 2>&1; do
    kill -0 "$dockerd" 2> /dev/null || stop "dockerd exited before it answered"
    sleep 0.2
done
fact docker "$(docker version --format '{{.Server.Version}}')"
echo "EPOLLBENCH-GUEST-READY" > /dev/console
wait "$dockerd"
stop "dockerd exited"
