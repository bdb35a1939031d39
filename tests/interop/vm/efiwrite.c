/* Test helper for tests/interop/test_secureboot_ovmf_boot.py (runs inside a QEMU guest).
 *
 * efiwrite SOURCE TARGET: clear the immutable flag efivarfs sets on Secure Boot
 * variables (busybox has no chattr), then write SOURCE (4-byte attributes followed by
 * an EFI_VARIABLE_AUTHENTICATION_2 update) to TARGET in ONE write(), as efivarfs
 * requires. Exit 0 when the firmware's SetVariable() accepted the update. */
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

static char buf[1 << 20];

int main(int argc, char **argv) {
    if (argc != 3) return 64;
    int in = open(argv[1], O_RDONLY);
    if (in < 0) { perror("open source"); return 2; }
    ssize_t n = read(in, buf, sizeof buf);
    if (n <= 4) { perror("read source"); return 2; }
    int fd = open(argv[2], O_RDONLY);
    if (fd >= 0) {
        int flags;
        if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
            flags &= ~FS_IMMUTABLE_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &flags);
        }
        close(fd);
    }
    fd = open(argv[2], O_WRONLY | O_CREAT, 0644);
    if (fd < 0) { perror("open target"); return 2; }
    if (write(fd, buf, (size_t)n) != n) { perror("write"); return 1; }
    return close(fd) == 0 ? 0 : 1;
}
