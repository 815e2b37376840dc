/*
 * A test program for nv_sha256.c (tests/native/test_native_sha256.py): for each file named, opens it,
 * hashes its fstat size with nv_sha256_fd and prints "<hex digest> <name>" on stdout. Unlike
 * the launcher it does not link nv_noenv.c, so NETTLE_FAT_OVERRIDE and NETTLE_FAT_VERBOSE
 * work here: the test chooses Nettle's portable code with the first and reads which code
 * Nettle chose from the second.
 *
 * --copy: nv_copy_sha256 instead, as the launcher copies a plugin: each file into a memfd,
 * hashed while it is copied; the program also hashes the finished memfd and fails unless the
 * copy holds the file's size and both digests agree. --copy-one-thread: the same after making
 * a second thread impossible (as root: opens the files, then becomes an unused uid with
 * RLIMIT_NPROC 1), and fails unless nv_copy_sha256, and nv_sha256_fd hashing the finished copy,
 * said so for every file over 1 MiB.
 */
#define _GNU_SOURCE
#include "nv.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>


static void print(const unsigned char digest[32], const char *name)
{
    for (size_t i = 0; i < 32; i++) printf("%02x", digest[i]);
    printf(" %s\n", name);
}

/* nv_copy_sha256 of fd into a fresh memfd; the finished copy must hold size bytes that hash the same. */
static int copy(int fd, uint64_t size, const char *name, int want_one_thread)
{
    int mem = memfd_create("test-copy", MFD_CLOEXEC);
    unsigned char digest[32], again[32];
    int one_thread = -1, one_thread_again = -1;
    struct stat st;
    if (mem < 0 || nv_copy_sha256(fd, mem, size, digest, &one_thread) < 0 || fstat(mem, &st) < 0
        || nv_sha256_fd(mem, size, again, &one_thread_again) < 0) {
        fprintf(stderr, "test_sha256: %s: %s\n", name, strerror(errno));
        return 1;
    }
    if ((uint64_t)st.st_size != size || memcmp(digest, again, sizeof digest) != 0) {
        fprintf(stderr, "test_sha256: %s: the copy (%lld bytes) does not hash as it was hashed while copied\n",
                name, (long long)st.st_size);
        return 1;
    }
    if (one_thread != (want_one_thread && size > (1u << 20)) || one_thread_again != one_thread) {
        fprintf(stderr, "test_sha256: %s: one_thread is %d, then %d hashing the copy\n", name, one_thread,
                one_thread_again);
        return 1;
    }
    close(mem);
    print(digest, name);
    return 0;
}

int main(int argc, char **argv)
{
    int first = 1, copying = 0, one_thread = 0;
    if (argc > 1 && strcmp(argv[1], "--copy") == 0) first = 2, copying = 1;
    if (argc > 1 && strcmp(argv[1], "--copy-one-thread") == 0) first = 2, copying = 1, one_thread = 1;
    int n = argc - first;
    int *fds = calloc((size_t)(n > 0 ? n : 1), sizeof *fds);
    for (int k = 0; k < n; k++)
        if ((fds[k] = open(argv[first + k], O_RDONLY | O_CLOEXEC)) < 0) {
            fprintf(stderr, "test_sha256: %s: %s\n", argv[first + k], strerror(errno));
            return 1;
        }
    if (one_thread) {
        struct rlimit one = {1, 1};
        if (setgroups(0, NULL) < 0 || setresgid(54321, 54321, 54321) < 0 || setresuid(54321, 54321, 54321) < 0
            || setrlimit(RLIMIT_NPROC, &one) < 0) {
            fprintf(stderr, "test_sha256: --copy-one-thread needs root (to become uid 54321): %s\n", strerror(errno));
            return 1;
        }
    }
    for (int k = 0; k < n; k++) {
        struct stat st;
        unsigned char digest[32];
        int ignored;
        if (fstat(fds[k], &st) < 0) {
            fprintf(stderr, "test_sha256: %s: %s\n", argv[first + k], strerror(errno));
            return 1;
        }
        if (copying) {
            if (copy(fds[k], (uint64_t)st.st_size, argv[first + k], one_thread)) return 1;
        } else if (nv_sha256_fd(fds[k], (uint64_t)st.st_size, digest, &ignored) < 0) {
            fprintf(stderr, "test_sha256: %s: %s\n", argv[first + k], strerror(errno));
            return 1;
        } else {
            print(digest, argv[first + k]);
        }
        close(fds[k]);
    }
    free(fds);
    return fflush(stdout) == 0 ? 0 : 1;
}
