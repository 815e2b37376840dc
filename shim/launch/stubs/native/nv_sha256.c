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
 *
 * nv_copy_sha256 copies the plugin into its memfd (or private file) and hashes the copy while
 * it is being made, the copy on a second thread: the hash is of the bytes in the copy, read
 * back from it, not of the source. It is the hash of the bytes that run because nothing else
 * can write the copy between the hash and the seal: the descriptor is ours alone (close-on-
 * exec, never passed), and the launcher is not dumpable (main() in nv_launcher.c), so no other
 * process of the Vault user can open it through /proc/PID/fd or write our memory through
 * /proc/PID/mem or ptrace. Only a process with CAP_SYS_PTRACE could, and such a process can
 * change the launcher itself. A file has a path, so the private-copy fallback (a file in a 0700
 * directory of the Vault user's) is copied by nv_copy_fd and hashed only once it is reopened
 * read-only and unlinked, as before.
 */
#include "nv.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>

_Static_assert(SHA256_DIGEST_SIZE == 32, "SHA-256 digests are 32 bytes");

/* Bytes [from, to) of fd into ctx, from its mapping if there is one, else read. */
static int hash_range(struct sha256_ctx *ctx, int fd, const unsigned char *map, uint64_t from, uint64_t to)
{
    if (map) {
        sha256_update(ctx, (size_t)(to - from), map + from);
        return 0;
    }
    static unsigned char buf[1 << 16];
    while (from < to) {
        size_t want = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
        ssize_t r = pread(fd, buf, want, (off_t)from);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) {               /* shorter than its size said */
            errno = EIO;
            return -1;
        }
        sha256_update(ctx, (size_t)r, buf);
        from += (uint64_t)r;
    }
    return 0;
}

int nv_sha256_fd(int fd, uint64_t size, unsigned char out[32])
{
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    /* Mapped where possible (the sealed memfd, or the private copy): no copy through a buffer.
     * 50 MB measured here: mapped 40.4 ms, pread in 1 MiB pieces 42.0 ms, medians of 31. The
     * caller has checked the size with fstat, and neither copy can shrink (seals; a 0700
     * directory of ours). */
    void *map = size ? mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    int r = hash_range(&ctx, fd, map != MAP_FAILED ? map : NULL, 0, size);
    if (map != MAP_FAILED) munmap(map, (size_t)size);
    if (r < 0) return -1;
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
    return 0;
}

/* ---- copying and hashing at once ------------------------------------------------------------ */

/* The copy runs on a second thread in pieces of this size; the first thread hashes each piece
 * as soon as it is in dst. 50 MB measured here (medians): copy then hash 67 ms, both at once
 * 39 ms, the hash alone 32 ms. */
#define PIECE (1u << 20)

typedef struct {
    int src, dst;
    uint64_t size;
    pthread_mutex_t mu;
    pthread_cond_t more;
    uint64_t copied;        /* bytes in dst; under mu */
    int err;                /* the copy's errno; -2: src ended early; under mu */
    int finished;           /* under mu */
} copy_job;

/* One piece of src at `at` onto dst's file position: sendfile, else read and write. The
 * number of bytes copied, 0 where src ends, or -1 with errno. */
static ssize_t copy_piece(int src, int dst, uint64_t at, size_t want)
{
    static unsigned char buf[1 << 16];      /* only the copying thread uses it */
    for (;;) {
        off_t off = (off_t)at;
        ssize_t r = sendfile(dst, src, &off, want);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno != EINVAL && errno != ENOSYS) return -1;
        r = pread(src, buf, want < sizeof buf ? want : sizeof buf, (off_t)at);     /* no sendfile here */
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r;
        for (ssize_t w = 0; w < r;) {
            ssize_t k = write(dst, buf + w, (size_t)(r - w));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return -1;
            w += k;
        }
        return r;
    }
}

static void *copier(void *arg)
{
    copy_job *job = arg;
    uint64_t at = 0;
    int err = 0;
    while (at < job->size) {
        size_t want = job->size - at < PIECE ? (size_t)(job->size - at) : PIECE;
        ssize_t r = copy_piece(job->src, job->dst, at, want);
        if (r <= 0) {
            err = r < 0 ? errno : -2;
            break;
        }
        at += (uint64_t)r;
        pthread_mutex_lock(&job->mu);
        job->copied = at;
        pthread_cond_signal(&job->more);
        pthread_mutex_unlock(&job->mu);
    }
    /* The source's pages leave the page cache once copied (advice only): the copy is what runs,
     * and the pod's memory would count the plugin twice. Once, over the whole file, while the
     * other thread hashes the last pieces: piece by piece it costs more (each call that meets
     * a page still in use drains every CPU's LRU lists), and misses large folios across pieces. */
    if (!err) posix_fadvise(job->src, 0, (off_t)job->size, POSIX_FADV_DONTNEED);
    pthread_mutex_lock(&job->mu);
    job->err = err;
    job->finished = 1;
    pthread_cond_signal(&job->more);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

int nv_copy_fd(int src, int dst, uint64_t size)
{
    copy_job job = {.src = src, .dst = dst, .size = size};
    pthread_mutex_init(&job.mu, NULL);
    pthread_cond_init(&job.more, NULL);
    copier(&job);
    pthread_cond_destroy(&job.more);
    pthread_mutex_destroy(&job.mu);
    if (job.err) errno = job.err == -2 ? EIO : job.err;
    return job.err == -2 ? -2 : job.err ? -1 : 0;
}

int nv_copy_sha256(int src, int dst, uint64_t size, unsigned char out[32], int *one_thread)
{
    /* A thread that cannot start (a pids limit: EAGAIN) costs time, not correctness: the
     * copy is made first, then hashed; *one_thread tells the caller, who says so. */
    copy_job job = {.src = src, .dst = dst, .size = size};
    pthread_mutex_init(&job.mu, NULL);
    pthread_cond_init(&job.more, NULL);
    pthread_t thread;
    int started = size > PIECE && pthread_create(&thread, NULL, copier, &job) == 0;
    *one_thread = size > PIECE && !started;
    if (!started) copier(&job);             /* all of it now, then the hash */
    /* dst grows under the mapping: only bytes already copied are touched (past its end, a
     * page would fault with SIGBUS). Private and read-only, so sealing dst stays possible. */
    void *map = size ? mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, dst, 0) : MAP_FAILED;
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    uint64_t hashed = 0;
    int err = 0, hash_err = 0;
    for (;;) {
        pthread_mutex_lock(&job.mu);
        while (job.copied == hashed && !job.finished) pthread_cond_wait(&job.more, &job.mu);
        uint64_t copied = job.copied;
        int finished = job.finished;
        err = job.err;
        pthread_mutex_unlock(&job.mu);
        if (copied > hashed && !hash_err) {
            if (hash_range(&ctx, dst, map != MAP_FAILED ? map : NULL, hashed, copied) < 0) hash_err = errno;
            hashed = copied;
            continue;
        }
        if (finished) break;
    }
    if (started) pthread_join(thread, NULL);
    if (map != MAP_FAILED) munmap(map, (size_t)size);
    pthread_cond_destroy(&job.more);
    pthread_mutex_destroy(&job.mu);
    if (err == -2) {
        errno = EIO;
        return -2;
    }
    if (err || hash_err) {
        errno = err ? err : hash_err;
        return -1;
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
    return 0;
}
