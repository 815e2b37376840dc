/*
 * A test program for nv_sha256.c (tests/test_native_sha256.py): for each file named, opens it,
 * hashes its fstat size with nv_sha256_fd and prints "<hex digest> <name>" on stdout. Unlike
 * the launcher it does not link nv_noenv.c, so NETTLE_FAT_OVERRIDE and NETTLE_FAT_VERBOSE
 * work here: the test chooses Nettle's portable code with the first and reads which code
 * Nettle chose from the second.
 *
 * Built with -DNV_TEST_NO_MMAP (static musl builds only), mmap fails here, so nv_sha256_fd
 * takes its pread path: the program's own mmap replaces musl's (which musl's malloc does not
 * call: it uses its internal __mmap).
 */
#include "nv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef NV_TEST_NO_MMAP
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    (void)addr, (void)len, (void)prot, (void)flags, (void)fd, (void)off;
    errno = ENODEV;
    return MAP_FAILED;
}
#endif

int main(int argc, char **argv)
{
    for (int k = 1; k < argc; k++) {
        int fd = open(argv[k], O_RDONLY | O_CLOEXEC);
        struct stat st;
        unsigned char digest[32];
        if (fd < 0 || fstat(fd, &st) < 0 || nv_sha256_fd(fd, (uint64_t)st.st_size, digest) < 0) {
            fprintf(stderr, "test_sha256: %s: %s\n", argv[k], strerror(errno));
            return 1;
        }
        close(fd);
        for (size_t i = 0; i < sizeof digest; i++) printf("%02x", digest[i]);
        printf(" %s\n", argv[k]);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
