/*
 * SHA-256 of a file's first bytes, with GNU Nettle (build/build_nettle.sh: Debian's nettle
 * 3.8.1, built "fat"). Nettle picks its SHA-256 compression function once, when the program
 * starts: the x86 SHA extensions (SHA-NI) or the ARMv8 SHA2 instructions where the CPU has
 * them, its portable code otherwise (x86_64 assembly, or C on arm64). libsodium, which the
 * launcher keeps for Ed25519 and BLAKE2b, has only portable C SHA-256 (50 MB: about 190 ms
 * here, against about 40 ms with SHA-NI).
 *
 * Nettle's choice can be steered by NETTLE_FAT_OVERRIDE and traced by NETTLE_FAT_VERBOSE; in
 * the launcher neither is read (nv_noenv.c), so the CPU alone decides.
 */
#include "nv.h"

#include <errno.h>
#include <nettle/sha2.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

_Static_assert(SHA256_DIGEST_SIZE == 32, "SHA-256 digests are 32 bytes");

int nv_sha256_fd(int fd, uint64_t size, unsigned char out[32])
{
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    /* Mapped where possible (the sealed memfd, or the private copy): no copy through a buffer.
     * 50 MB measured here: mapped 40.4 ms, pread in 1 MiB pieces 42.0 ms, medians of 31. The
     * caller has checked the size with fstat, and neither copy can shrink (seals; a 0700
     * directory of ours). */
    void *map = size ? mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (map != MAP_FAILED) {
        sha256_update(&ctx, (size_t)size, map);
        munmap(map, (size_t)size);
    } else if (size) {
        static unsigned char buf[1 << 16];
        for (uint64_t done = 0; done < size;) {
            size_t want = size - done < sizeof buf ? (size_t)(size - done) : sizeof buf;
            ssize_t r = pread(fd, buf, want, (off_t)done);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) return -1;
            if (r == 0) {               /* shorter than its size said */
                errno = EIO;
                return -1;
            }
            sha256_update(&ctx, (size_t)r, buf);
            done += (uint64_t)r;
        }
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
    return 0;
}
