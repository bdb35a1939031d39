#!/bin/sh
# /init of the RAUC guest (busybox ash), packed by tests/raucguestkit.py: Debian's RAUC,
# as a RAUC device runs it, installs bastion bundles with the kernel's loop device,
# dm-verity and squashfs (the host kernel has no device-mapper).
#
# /etc/raucguest/disks   one virtio serial per line: /dev/raucguest/<serial> is made for it
# /etc/raucguest/steps   "info NAME" or "install NAME" per line: rauc info|install
#                        /bundles/NAME.raucb, in order
# Console lines for the host (tests/raucguestkit.py parse_console):
#   RAUCGUEST: disks: SERIALS        every slot disk was found
#   RAUCGUEST: rauc service up       `rauc status` answered over D-Bus
#   RAUCGUEST: begin STEP            the step's output follows (stdout and stderr)
#   RAUCGUEST: end STEP rc=N         its exit code
#   RAUCGUEST: failed: REASON        the guest could not set up; nothing after it runs
#   RAUCGUEST: done                  every step ran; the disks are synced
# Steps named "status", "service-log" and "dmesg" are added by this script.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DBUS_STARTER_BUS_TYPE=session
export DBUS_SESSION_BUS_ADDRESS=unix:path=/run/raucguest-bus

say() { echo "RAUCGUEST: $*"; }
finish() {
    sync
    poweroff -f
    sleep 10
    echo o > /proc/sysrq-trigger
}
fail() { say "failed: $*"; finish; exit 1; }
step() { # NAME COMMAND...
    name=$1
    shift
    say "begin $name"
    "$@" < /dev/null 2>&1
    rc=$?
    say "end $name rc=$rc"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /mnt/rauc /run/rauc /dev/raucguest
echo /sbin/modprobe > /proc/sys/kernel/modprobe

for module in virtio_pci virtio_blk loop dm_mod dm_verity squashfs; do
    modprobe "$module" || fail "modprobe $module"
done

# the slots' disks, by the serial QEMU gave each (probe order is not promised)
tries=0
while :; do
    missing=
    for want in $(cat /etc/raucguest/disks); do
        [ -e "/dev/raucguest/$want" ] && continue
        for dev in /sys/block/vd*; do
            [ -r "$dev/serial" ] || continue
            if [ "$(cat "$dev/serial")" = "$want" ]; then
                ln -s "/dev/${dev##*/}" "/dev/raucguest/$want"
            fi
        done
        [ -e "/dev/raucguest/$want" ] || missing="$missing $want"
    done
    [ -z "$missing" ] && break
    tries=$((tries + 1))
    [ "$tries" -gt 100 ] && fail "no virtio disk with serial$missing"
    sleep 0.1
done

say "disks: $(ls /dev/raucguest | tr '\n' ' ')"

# Debian's rauc is built with its D-Bus service: `rauc install` asks `rauc service`
dbus-daemon --config-file=/etc/raucguest/bus.conf --fork --nopidfile || fail "dbus-daemon"
rauc service > /run/rauc-service.log 2>&1 &
tries=0
until timeout 10 rauc status > /dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 20 ]; then
        cat /run/rauc-service.log
        fail "rauc service did not answer on D-Bus"
    fi
    sleep 1
done
say "rauc service up"
step status rauc status --detailed

while read -r verb name; do
    case "$verb" in
        info|install) step "$verb-$name" rauc "$verb" "/bundles/$name.raucb" ;;
        *) fail "unknown step $verb" ;;
    esac
done < /etc/raucguest/steps

step service-log cat /run/rauc-service.log
step dmesg dmesg
sync
say "done"
finish
