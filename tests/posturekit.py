"""Kernel state samples shared by the posture tests (formats/kernelstate.py, device/posture.py).

Hand-written from the kernel documentation, not copied from a machine: the /proc/net
tables follow Documentation/networking/proc_net_tcp.rst (header and column layout of
net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c, net/ipv4/udp.c; addresses as host-order
words of a little-endian machine), mountinfo follows Documentation/filesystems/proc.rst
section 3.5. Sockets: TCP 0.0.0.0:22 and 127.0.0.1:631 listening, 10.0.2.15:22
established; TCP6 [::1]:8080 listening; UDP 127.0.0.53:53 unconnected, one connected.
"""

from __future__ import annotations

TCP = (
    b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    b"   uid  timeout inode\n"
    b"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
    b"     0        0 17021 1 0000000000000000 100 0 0 10 0\n"
    b"   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
    b"     0        0 17033 1 0000000000000000 100 0 0 10 0\n"
    b"   2: 0F02000A:0016 0202000A:D2F4 01 00000000:00000000 02:000A7D9B 00000000"
    b"     0        0 19001 4 0000000000000000 20 4 29 10 -1\n"
)
TCP6 = (
    b"  sl  local_address                         remote_address"
    b"                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    b"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000"
    b" 0A 00000000:00000000 00:00000000 00000000  1000        0 22001 1 0000000000000000"
    b" 100 0 0 10 0\n"
)
UDP = (
    b"   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    b"   uid  timeout inode ref pointer drops\n"
    b"  101: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000"
    b"   101        0 15001 2 0000000000000000 0\n"
    b"  102: 0F02000A:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000"
    b"  1000        0 15002 2 0000000000000000 0\n"
)
MOUNTINFO = (
    b"22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    b"28 1 253:0 / / ro,relatime shared:1 - ext4 /dev/mapper/root ro\n"
    b"40 28 8:1 / /boot/my\\040efi rw,relatime shared:2 - vfat /dev/sda1 rw\n"
)
