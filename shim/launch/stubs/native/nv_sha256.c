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
 * nv_copy_sha256 copies the plugin into its memfd and hashes it while it is being made, through
 * buffers of our own: each piece is read from the source into a buffer, hashed from that buffer,
 * and written from it into the copy, the reading and writing on a second thread, the hashing on
 * the first. The bytes hashed are the bytes written: a buffer is not used again until both the
 * hash and the write of its piece are done, and the source is never read twice. It is the hash
 * of the bytes that run because nothing else can write the copy between the write and the seal:
 * the descriptor is ours alone (close-on-exec, never passed), and the launcher is not dumpable
 * (main() in nv_launcher.c), so no other process of the Vault user can open it through
 * /proc/PID/fd or write our memory or our buffers through /proc/PID/mem or ptrace. Only a
 * process with CAP_SYS_PTRACE could, and such a process can change the launcher itself. The
 * private-copy fallback (an unnamed file, private_copy in nv_launcher.c) is copied by nv_copy_fd
 * and hashed once only a read-only descriptor of it is left.
 *
 * Why buffers rather than hashing the memfd's own pages: 50 MB, medians here, the source just
 * dropped from the page cache (a relaunch): copied with sendfile and hashed from the memfd's
 * mapping, 46 ms; through buffers, 41 ms. With the source cached, 41 ms and 34 ms: a memfd's
 * pages, one 4 KiB page at a time in shared memory, hash about 15% slower than the same bytes
 * in a 256 KiB buffer the other core has just filled, and slower than the page cache's large
 * folios that a direct launch hashes.
 */
#include "nv.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/sendfile.h>
#include <unistd.h>

_Static_assert(SHA256_DIGEST_SIZE == 32, "SHA-256 digests are 32 bytes");

/* ---- copying and hashing at once ------------------------------------------------------------ */

/* Pieces of PIECE bytes go through SLOTS buffers (2 MiB, within one core's L2 here). A second
 * thread only for copies over THREAD_MIN: below that, it would cost more than it saves. */
#define PIECE (256u << 10)
#define SLOTS 8u
#define THREAD_MIN (1u << 20)

typedef struct {
    int src, dst;               /* dst -1: hash only */
    uint64_t size, pieces;
    int threaded;
    struct sha256_ctx *ctx;     /* the one-thread copy hashes as it goes */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t filled;            /* pieces read into their buffer; under mu */
    uint64_t hashed;            /* pieces hashed; under mu */
    int err;                    /* the copy's errno; -2: src ended early; under mu */
    int finished;               /* under mu */
} copy_job;

static unsigned char slot_buf[SLOTS][PIECE];    /* one pipeline at a time: the launcher runs one */

static size_t piece_len(const copy_job *job, uint64_t i)
{
    uint64_t at = i * PIECE;
    return job->size - at < PIECE ? (size_t)(job->size - at) : PIECE;
}

/* All of [at, at + want) of src into buf: 0; -1 with errno; -2 where src ends first. */
static int read_full(int src, unsigned char *buf, size_t want, uint64_t at)
{
    for (size_t got = 0; got < want;) {
        ssize_t r = pread(src, buf + got, want - got, (off_t)(at + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) {
            errno = EIO;
            return -2;
        }
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int dst, const unsigned char *buf, size_t want, uint64_t at)
{
    for (size_t put = 0; put < want;) {
        ssize_t r = pwrite(dst, buf + put, want - put, (off_t)(at + put));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        put += (size_t)r;
    }
    return 0;
}

/* The copying side: read piece i into its buffer once the hash of the piece that used it
 * last is done, hand it to the hash, write it into dst (if there is one). On one thread
 * (job->threaded == 0), each piece is hashed between its read and its write. */
static void *copier(void *arg)
{
    copy_job *job = arg;
    int err = 0;
    for (uint64_t i = 0; i < job->pieces && !err; i++) {
        unsigned char *buf = slot_buf[i % SLOTS];
        size_t len = piece_len(job, i);
        if (job->threaded) {
            pthread_mutex_lock(&job->mu);
            while (i >= SLOTS && job->hashed < i - SLOTS + 1) pthread_cond_wait(&job->cv, &job->mu);
            pthread_mutex_unlock(&job->mu);
        }
        int r = read_full(job->src, buf, len, i * PIECE);
        if (r < 0) {
            err = r == -2 ? -2 : errno;
            break;
        }
        if (job->threaded) {
            pthread_mutex_lock(&job->mu);
            job->filled = i + 1;
            pthread_cond_broadcast(&job->cv);
            pthread_mutex_unlock(&job->mu);
        } else {
            sha256_update(job->ctx, len, buf);
        }
        if (job->dst >= 0 && write_full(job->dst, buf, len, i * PIECE) < 0) err = errno;
    }
    /* The source's pages leave the page cache once copied (advice only): the copy is what runs,
     * and the pod's memory would count the plugin twice. Once, over the whole file, while the
     * other thread hashes the last pieces: piece by piece it costs more (each call that meets
     * a page still in use drains every CPU's LRU lists), and misses large folios across pieces. */
    if (!err && job->dst >= 0) posix_fadvise(job->src, 0, (off_t)job->size, POSIX_FADV_DONTNEED);
    pthread_mutex_lock(&job->mu);
    job->err = err;
    job->finished = 1;
    pthread_cond_broadcast(&job->cv);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

int nv_copy_fd(int src, int dst, uint64_t size)
{
    static unsigned char buf[1 << 16];
    for (uint64_t at = 0; at < size;) {
        size_t want = size - at < (1u << 20) ? (size_t)(size - at) : (1u << 20);     /* 1 MiB at a time */
        off_t off = (off_t)at;
        ssize_t r = sendfile(dst, src, &off, want);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno != EINVAL && errno != ENOSYS) return -1;
        if (r < 0) {                            /* no sendfile between these two */
            r = (ssize_t)(want < sizeof buf ? want : sizeof buf);
            int k = read_full(src, buf, (size_t)r, at);
            if (k < 0) return k;
            if (write_full(dst, buf, (size_t)r, at) < 0) return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -2;
        }
        at += (uint64_t)r;
    }
    posix_fadvise(src, 0, (off_t)size, POSIX_FADV_DONTNEED);   /* as copier() does */
    return 0;
}

int nv_sha256_fd(int fd, uint64_t size, unsigned char out[32], int *one_thread)
{
    /* The same pipeline without a copy: a running process's sealed copy that a launch shares,
     * the private copy, a file that `explain` checks. 15 MB here, medians of 15: 10.2 ms,
     * against 12.4 ms hashing the memfd through a mapping (the way until 2026-12-06). Where no
     * thread can start, it is read and hashed in turn: slower, the same digest, and
     * *one_thread tells the caller, who says so (nv_check_digest). */
    int r = nv_copy_sha256(fd, -1, size, out, one_thread);
    return r == -2 ? -1 : r;                    /* errno is EIO: shorter than its size said */
}

int nv_copy_sha256(int src, int dst, uint64_t size, unsigned char out[32], int *one_thread)
{
    /* A thread that cannot start (a pids limit: EAGAIN) costs time, not correctness: each
     * piece is then read, hashed and written in turn; *one_thread tells the caller, who says so. */
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    copy_job job = {.src = src, .dst = dst, .size = size, .pieces = (size + PIECE - 1) / PIECE, .ctx = &ctx};
    pthread_mutex_init(&job.mu, NULL);
    pthread_cond_init(&job.cv, NULL);
    pthread_t thread;
    job.threaded = size > THREAD_MIN;
    int started = job.threaded && pthread_create(&thread, NULL, copier, &job) == 0;
    *one_thread = job.threaded && !started;
    if (!started) {
        job.threaded = 0;                       /* no other thread exists */
        copier(&job);
    }
    for (uint64_t i = 0; started && i < job.pieces; i++) {
        pthread_mutex_lock(&job.mu);
        while (job.filled <= i && !job.finished) pthread_cond_wait(&job.cv, &job.mu);
        int ready = job.filled > i;
        pthread_mutex_unlock(&job.mu);
        if (!ready) break;                      /* the copy failed: its error is below */
        sha256_update(&ctx, piece_len(&job, i), slot_buf[i % SLOTS]);
        pthread_mutex_lock(&job.mu);
        job.hashed = i + 1;
        pthread_cond_broadcast(&job.cv);
        pthread_mutex_unlock(&job.mu);
    }
    if (started) pthread_join(thread, NULL);
    pthread_cond_destroy(&job.cv);
    pthread_mutex_destroy(&job.mu);
    if (job.err == -2) {
        errno = EIO;
        return -2;
    }
    if (job.err) {
        errno = job.err;
        return -1;
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
    return 0;
}
