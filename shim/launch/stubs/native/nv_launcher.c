/*
 * The native exec-mode launcher: the registered file verifies and executes the plugin by
 * itself, with no interpreter.
 *
 * The registered file is   [this program, a static ELF][policy][trailer]
 * Trailer (the last 24 bytes, little-endian): "VPNATV\0\1"  policy_offset u64  policy_length u64.
 * The policy starts right after the program and ends right at the trailer (nv.h gives its
 * form); Vault's catalog pins the sha256 of all of it.
 *
 * Started by Vault (its magic cookie is in the environment), it makes the decision of
 * shim.trust.verify.select (nv_select.c), copies the chosen binary into a sealed memfd,
 * hashes the sealed copy against the signed manifest, and executes that descriptor with
 * Vault's argv (argv[0] becomes the binary's path) and Vault's environment, untouched.
 * Where memfd exec is refused, the verified bytes go to a private file (shim/launch/memexec.py
 * does the same). Run by hand (no cookie), it explains itself on stderr and reports what the
 * next launch would run and why each other candidate is refused; nothing is executed. By hand,
 * `explain --json` writes that decision as one JSON document on stdout instead (for
 * `vault-plugin-shim doctor` and `verify --launcher`); no launch path writes to stdout.
 *
 * What it looks at in Vault's environment, without getenv: whether a go-plugin magic
 * cookie is there (as every go-plugin plugin does), and TMPDIR, only for the private-copy
 * fallback. Nothing there can widen the policy. Static musl, so no dynamic loader runs and
 * LD_* mean nothing; nothing is ever written to stdout, which belongs to go-plugin.
 *
 * A second process of a version shares the sealed memfd a running one executes (only one
 * owned by our uid, fully sealed, of the signed size, and hashing to the manifest), so a pod
 * pays for one copy per version. Proxy mode (nv_proxy.c) makes the same decision here, then
 * starts the Python proxy with the sealed copy and the verdict; its hot swap rescans run this
 * launcher's select-only mode.
 */
#define _GNU_SOURCE
#include "nv.h"
#include "nv_proxy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

#define TRAILER_SIZE 24
#define EXE_MAX 4096
static const char TRAILER_MAGIC[8] = {'V', 'P', 'N', 'A', 'T', 'V', 0, 1};
static const char BACKEND_COOKIE[] = "VAULT_BACKEND_PLUGIN=6669da05-b1c8-4f49-97d9-c8e5bed98e20";
static const char DATABASE_COOKIE[] = "VAULT_DATABASE_PLUGIN=926a0820-aea2-be28-51d6-83cdf00e8edb";
static const char FIX_REBUILD[] =
    "rebuild the launcher with `vault-plugin-shim launcher build` and register its new sha256";

static char self_path[EXE_MAX];
/* Not dumpable, first of all: this constructor runs before any other (Nettle's CPU detection is
 * one) and before main(). From here on no other process of the Vault user may open our
 * descriptors through /proc/PID/fd, or read or write our memory (/proc/PID/mem, ptrace), while
 * the plugin is copied and hashed (nv_sha256.c). Before it, between the kernel's exec and this
 * first call, nothing of ours is open yet; a process allowed to attach to us then (Yama's
 * ptrace_scope 1, Debian's default, allows only an ancestor) could attach to Vault itself.
 * execve makes the plugin dumpable again, as Vault would have started it. */
__attribute__((constructor(101))) static void not_dumpable(void)
{
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static struct sigaction vaults_sigxfsz;     /* restored before exec: the plugin gets Vault's */

/* ---- failing --------------------------------------------------------------------------------- */

/* entry._main's refusal: "refusing to start TYPE plugin NAME: REASON", the plugin, the error. */
static _Noreturn void refuse(const nv_policy *p, const nv_error *e)
{
    nv_buf m = {0};
    nv_buf_printf(&m, "vault-plugin-shim: refusing to start %s plugin %s: %s", p->type, p->name,
                  e->reason ? e->reason : "");
    nv_log l;
    nv_log_begin(&l, "error", m.p, m.n);
    nv_log_fieldz(&l, "plugin", p->name);
    nv_log_error_fields(&l, e);
    nv_log_end(&l, 2);
    _exit(1);
}

static _Noreturn void bad_file(const char *reason)
{
    nv_fail_launch("vault-plugin-shim: the launcher file is damaged", self_path, reason, 0, FIX_REBUILD);
}

/* ---- the launcher's own file ------------------------------------------------------------------- */

/* The policy bytes from the trailer, checked strictly (every byte accounted for). */
static unsigned char *read_policy(size_t *len)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n < 0)
        nv_fail_launch("vault-plugin-shim: cannot find the launcher's own file", "/proc/self/exe",
                    "readlink(/proc/self/exe) failed", errno, "mount /proc in the Vault container");
    self_path[n] = 0;
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        nv_fail_launch("vault-plugin-shim: cannot open the launcher's own file", self_path,
                    "open(/proc/self/exe) failed", errno, "mount /proc in the Vault container");
    if (!S_ISREG(st.st_mode)) bad_file("the executed file is not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    unsigned char tr[TRAILER_SIZE];
    if (size < TRAILER_SIZE) bad_file("the file is shorter than its trailer");
    if (nv_read_at(fd, tr, TRAILER_SIZE, size - TRAILER_SIZE) < 0) bad_file("the trailer cannot be read");
    int proxy = memcmp(tr, NV_PROXY_TRAILER_MAGIC, 8) == 0;    /* proxy mode: with the Python part (nv_proxy.c) */
    if (!proxy && memcmp(tr, TRAILER_MAGIC, 8) != 0) bad_file("no native launcher trailer at the end of the file (bad magic)");
    uint64_t off = nv_le64(tr + 8), plen = nv_le64(tr + 16);
    uint64_t end = proxy ? nv_proxy_layout(fd, size, off, self_path) : size - TRAILER_SIZE;
    if (off == 0 || off > end || plen != end - off) bad_file("trailer: the policy is not right before the trailer");
    if (plen == 0 || plen > NV_POLICY_MAX) bad_file("trailer: the policy is empty or larger than 64 KiB");
    unsigned char *policy = nv_xmalloc((size_t)plen);
    if (nv_read_at(fd, policy, (size_t)plen, off) < 0) bad_file("the policy cannot be read");
    close(fd);
    *len = (size_t)plen;
    return policy;
}

/* A relative plugins_dir is relative to the launcher's real directory (policy.resolved):
 * dirname(realpath), joined, with "." and empty segments dropped ('..' is refused). */
static char *resolve_dir(const char *dir)
{
    if (dir[0] == '/') return nv_xstrndup(dir, strlen(dir));
    nv_buf b = {0};
    const char *slash = strrchr(self_path, '/');
    nv_buf_put(&b, self_path, slash && slash != self_path ? (size_t)(slash - self_path) : 1);
    const char *seg = dir;
    while (*seg) {
        const char *e = strchr(seg, '/');
        size_t n = e ? (size_t)(e - seg) : strlen(seg);
        if (n && !(n == 1 && seg[0] == '.')) {
            if (!b.n || b.p[b.n - 1] != '/') nv_buf_putc(&b, '/');
            nv_buf_put(&b, seg, n);
        }
        seg += n + (e != NULL);
    }
    return nv_buf_take(&b);
}

/* ---- the verified copy ----------------------------------------------------------------------------- */

typedef struct {
    const char *tmpdir;     /* Vault's TMPDIR for the plugin, for the fallback */
    int fd;                 /* the verified copy */
    const char *how;        /* "memfd", "memfd-shared" or "private-file" */
    int no_share;           /* make our own copy even if a running process has one */
} launch_ctx;

/* nv_copy_sha256, and a line where it had to read, hash and copy on one thread (slower, not less safe). */
static int copy_and_hash(int src, int dst, const nv_candidate *c, unsigned char digest[32])
{
    int one_thread = 0;
    int r = nv_copy_sha256(src, dst, (uint64_t)c->manifest.size, digest, &one_thread);
    if (one_thread) nv_log_one_thread(1, c->path);
    return r;
}

static int make_memfd(const char *name)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && errno == EINVAL)      /* before Linux 6.3: no MFD_EXEC, executable by default */
        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd;
}

/* The fix for an errno from copying or executing: a resource limit is named as one
 * (issue 17: tiny rlimits must say which limit). */
static const char *fix_for(int err)
{
    switch (err) {
    case EMFILE:
    case ENFILE:
        return "raise Vault's open-file limit (ulimit -n, systemd LimitNOFILE)";
    case EFBIG:
        return "raise Vault's file size limit (ulimit -f, RLIMIT_FSIZE): a memfd or private copy of the plugin "
               "counts against it";
    case ENOMEM:
    case ENOSPC:
    case EDQUOT:
        return "raise the memory limit (a memfd counts against the pod's memory limit; ulimit -v limits the "
               "address space), or free space in the temporary directory";
    default:
        return "see the cause; nothing unverified was run";
    }
}

/* Descriptors 0-2 are Vault's, even when closed. A descriptor the plugin keeps (a script's
 * memfd) must not land there: it would become the plugin's stdin, stdout or stderr. */
static int above_stdio(int fd)
{
    if (fd < 0 || fd > 2) return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved = errno;
    close(fd);
    errno = saved;
    return high;
}

static const char *tmp_parent(const launch_ctx *lc) { return lc->tmpdir && *lc->tmpdir ? lc->tmpdir : "/tmp"; }

/* memexec.check_temp_parent: TMPDIR private or sticky (the copy itself has no name there). */
static int check_temp_parent(const char *parent, nv_error *err)
{
    struct stat st;
    if (stat(parent, &st) < 0 || !S_ISDIR(st.st_mode)) {
        nv_fail(err, NV_LAUNCH, NULL, "set TMPDIR in the plugin's catalog env to a directory the Vault user owns",
                "the temporary directory for the private copy (%s) is unusable", parent);
        return -1;
    }
    if (((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) || (st.st_uid != 0 && st.st_uid != geteuid())) {
        nv_fail(err, NV_LAUNCH, NULL,
                "set TMPDIR in the plugin's catalog env to a directory the Vault user owns with mode 0700, or use "
                "a sticky /tmp",
                "the temporary directory for the private copy (%s) is writable by others without the sticky bit, "
                "or owned by uid %u (mode %04o)", parent, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

/* memexec.to_private_file: an unnamed file (O_TMPFILE) in TMPDIR, mode 0500, written through one
 * descriptor, reopened read-only through /proc/self/fd, and the writable descriptor closed;
 * returns the read-only one, which the caller hashes and executes. The file never has a path,
 * and the launcher is not dumpable, so no other process of the Vault user can open it, by name
 * or through /proc/PID/fd: once the writable descriptor is closed, nothing can write the bytes
 * the caller hashes, and exec keeps it so. (A named file, even unlinked right after, could be
 * opened while it existed and written again after the hash: found in review, 2026-12-06.) A file
 * system without O_TMPFILE (overlayfs before Linux 6.6) fails closed with the fix. */
static int private_copy(int src, uint64_t size, const char *parent, nv_error *err)
{
    if (check_temp_parent(parent, err) < 0) return -1;
    int out = open(parent, O_TMPFILE | O_RDWR | O_CLOEXEC, 0500);
    if (out < 0) {
        int saved = errno;
        if (saved == EOPNOTSUPP || saved == EISDIR)
            nv_fail(err, NV_LAUNCH, NULL,
                    "set TMPDIR in the plugin's catalog env to a directory on tmpfs (an emptyDir with medium: "
                    "Memory), ext4 or xfs that the Vault user owns",
                    "cannot make the private copy in %s: its file system cannot make unnamed files (O_TMPFILE: "
                    "%s), and a named copy could be rewritten after its hash", parent, strerror(saved));
        else
            nv_fail(err, NV_LAUNCH, NULL, saved == EMFILE || saved == ENFILE || saved == ENOSPC || saved == EDQUOT
                    ? fix_for(saved)
                    : "set TMPDIR in the plugin's catalog env to a writable, executable directory the Vault user "
                      "owns (e.g. an emptyDir tmpfs)",
                    "cannot make the private copy in %s: no usable temporary directory (%s)", parent,
                    strerror(saved));
        return -1;
    }
    int ro = -1;
    if (nv_copy_fd(src, out, size) == 0) {
        char path[40];
        snprintf(path, sizeof path, "/proc/self/fd/%d", out);
        ro = open(path, O_RDONLY | O_CLOEXEC);
    }
    int saved = errno;
    close(out);
    if (ro < 0)
        nv_fail(err, NV_LAUNCH, NULL, fix_for(saved), "cannot make the private copy in %s (%s)", parent,
                strerror(saved));
    return above_stdio(ro);
}

/* ---- sharing a running process's sealed copy (shim/launch/memexec.sealed_siblings) ---------- */

#define SIBLING_LIMIT 8     /* sealed memfds of one name looked at */
#define SIBLING_HASHES 2    /* of which at most this many are hashed (issue 17: decoys cost time) */
#define ALL_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

/* A sealed memfd of this version that a process of ours already executes, if its bytes
 * hash to the signed manifest; else -1. Only copies owned by our own uid, executable by us,
 * carrying every seal (their bytes can never change again) and of the signed size are
 * considered, and at most SIBLING_HASHES of them are hashed. A copy that does not match is
 * ignored with one warning: it can only make this launch do its own copy. */
static int shared_copy(nv_candidate *c, const char *name)
{
    char want[300];
    snprintf(want, sizeof want, "/memfd:%s (deleted)", name);
    DIR *proc = opendir("/proc");
    if (!proc) return -1;
    struct dirent *e;
    int found = -1, looked = 0, hashed = 0;
    dev_t seen_dev[SIBLING_LIMIT];
    ino_t seen_ino[SIBLING_LIMIT];
    uid_t me = geteuid();
    while (found < 0 && looked < SIBLING_LIMIT && hashed < SIBLING_HASHES && (e = readdir(proc)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        char path[64], target[300];
        snprintf(path, sizeof path, "/proc/%.20s/exe", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0) continue;    /* gone, a kernel thread, or another user's */
        target[n] = 0;
        if (strcmp(target, want) != 0) continue;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat st;
        int seals = fcntl(fd, F_GET_SEALS);
        int dup = 0;
        if (fstat(fd, &st) < 0) {
            close(fd);
            continue;
        }
        for (int k = 0; k < looked; k++) dup |= seen_dev[k] == st.st_dev && seen_ino[k] == st.st_ino;
        if (seals < 0 || (seals & ALL_SEALS) != ALL_SEALS || dup || !S_ISREG(st.st_mode) || st.st_uid != me ||
            !(st.st_mode & S_IXUSR) || (int64_t)st.st_size != c->manifest.size) {
            close(fd);
            continue;
        }
        seen_dev[looked] = st.st_dev;
        seen_ino[looked] = st.st_ino;
        looked++;
        hashed++;
        nv_error err = {0};
        if (nv_check_digest(fd, c, &err) == 0) {
            found = above_stdio(fd);
            break;
        }
        close(fd);
        nv_buf m = {0};
        nv_buf_printf(&m, "vault-plugin-shim: a running process's sealed memfd named %s does not match the signed "
                          "manifest; ignored, making our own copy", name);
        nv_log l;
        nv_log_begin(&l, "warn", m.p, m.n);
        nv_buf_free(&m);
        nv_log_fieldz(&l, "file", c->path);
        nv_log_fieldz(&l, "reason", err.reason ? err.reason : "");
        nv_log_fieldz(&l, "fix", "find the process that runs it (doctor lists them) and why it has that name");
        nv_log_end(&l, 2);
        nv_error_clear(&err);
    }
    closedir(proc);
    return found;
}

/* select's accept: copy into a sealed memfd (or, where memfds are refused, a private file)
 * and hash the copy: the bytes that will run. */
static int seal_and_check(nv_selection *s, nv_candidate *c, void *ctxp, nv_error *err)
{
    launch_ctx *lc = ctxp;
    if (nv_proxy_skipped(c, err)) return -1;    /* select-only: a release hot swap asked to pass over */
    int src = nv_open_binary(s, c, err);
    if (src < 0) return -1;
    char name[250];     /* the kernel keeps 249 bytes of a memfd's name */
    snprintf(name, sizeof name, "%s-%s", s->policy->name, c->manifest.version_text);
    if (!lc->no_share) {
        int shared = shared_copy(c, name);
        if (shared >= 0) {
            close(src);
            lc->fd = shared;
            lc->how = "memfd-shared";
            return 0;
        }
    }
    const char *how = "memfd";
    unsigned char digest[32];
    int fd = above_stdio(make_memfd(name));
    if (fd >= 0) {
        int r = copy_and_hash(src, fd, c, digest);
        if (r < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) {
            int saved = errno;
            close(fd);
            close(src);
            if (r == -2) nv_fail(err, NV_DIGEST_MISMATCH, c->path, NULL, "the file shrank while being copied");
            else nv_fail(err, NV_LAUNCH, NULL, fix_for(saved), "cannot copy the binary for verification: %s",
                         strerror(saved));
            return -1;
        }
    } else if (errno == EACCES || errno == EPERM || errno == ENOSYS) {
        how = "private-file";
        fd = private_copy(src, (uint64_t)c->manifest.size, tmp_parent(lc), err);
        if (fd < 0) { close(src); return -1; }
    } else {
        int saved = errno;
        close(src);
        nv_fail(err, NV_LAUNCH, NULL, fix_for(saved), "cannot copy the binary for verification: %s",
                strerror(saved));
        return -1;
    }
    close(src);
    /* The memfd was hashed while it was made (nv_sha256.c); the private file is hashed now, through
     * the read-only descriptor that is left of it (private_copy). */
    if ((strcmp(how, "memfd") == 0 ? nv_digest_matches(c, digest, err) : nv_check_digest(fd, c, err)) < 0) {
        close(fd);
        return -1;
    }
    lc->fd = fd;
    lc->how = how;
    return 0;
}

/* ---- executing ---------------------------------------------------------------------------------- */

/* fexecve, and where execveat is refused (a seccomp profile that allows only execve, or an
 * old kernel), execve of /proc/self/fd/N: the same sealed, verified inode. Returns errno. */
static int exec_fd(int fd, char **argv, char **envp)
{
    struct sigaction ours;
    sigaction(SIGXFSZ, &vaults_sigxfsz, &ours);
    syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
    int err = errno;
    if (err == ENOSYS || err == EPERM) {
        char path[40];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        execve(path, argv, envp);
        if (errno != ENOENT) err = errno;
    }
    sigaction(SIGXFSZ, &ours, NULL);    /* not executed: a copy may follow, past RLIMIT_FSIZE too */
    return err;
}

static void log_start(const nv_selection *s, const nv_candidate *c, const char *how)
{
    nv_buf m = {0};
    nv_buf_printf(&m, "vault-plugin-shim: starting %s plugin %s %s", s->policy->type, s->policy->name,
                  c->manifest.version_text);
    char hex[17];
    nv_key_id_hex(hex, s->policy->keys[c->key_index].key_id);
    nv_log l;
    nv_log_begin(&l, "info", m.p, m.n);
    nv_buf_free(&m);
    nv_log_fieldz(&l, "plugin", s->policy->name);
    nv_log_fieldz(&l, "version", c->manifest.version_text);
    nv_log_fieldz(&l, "sha256", c->manifest.sha256);
    nv_log_fieldz(&l, "key_id", hex);
    nv_log_fieldz(&l, "file", c->path);
    nv_log_fieldz(&l, "exec_via", how);
    nv_log_end(&l, 2);
}

static _Noreturn void cannot_execute(const nv_candidate *c, int err, const char *how)
{
    nv_buf r = {0};
    nv_buf_printf(&r, "cannot execute the verified copy (%s); the plugin did not start", strerror(err));
    const char *fix = strcmp(how, "private-file") == 0 && (err == EACCES || err == EPERM)
        ? "the private copy's directory (TMPDIR, else /tmp) may be mounted noexec: set TMPDIR in the plugin's "
          "catalog env to an executable directory the Vault user owns (an emptyDir tmpfs)"
        : err == EPERM || err == ENOSYS
        ? "a seccomp profile or an LSM refused execveat and execve of /proc/self/fd: allow one of them (and "
          "memfd_create) for the Vault process"
        : err == ENOEXEC || err == ENOENT
        ? "check that the binary is built for this node (ELF, right architecture; a script's interpreter exists)"
        : fix_for(err);
    nv_fail_launch("vault-plugin-shim: cannot execute the verified copy", c->path, r.p, err, fix);
}

/* The value of the first KEY= entry, as execve's consumers (Go's os.Getenv, Python's
 * launcher) read a duplicated variable; NULL if there is none. */
static const char *env_value(char **envp, const char *key)
{
    size_t n = strlen(key);
    for (char **e = envp; *e; e++)
        if (strncmp(*e, key, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

static int cookie_is(char **envp, const char *cookie)
{
    const char *eq = strchr(cookie, '=');
    char key[64];
    snprintf(key, sizeof key, "%.*s", (int)(eq - cookie), cookie);
    const char *value = env_value(envp, key);
    return value && strcmp(value, eq + 1) == 0;
}

static int hash_only(nv_selection *s, nv_candidate *c, void *ctx, nv_error *err)
{
    (void)ctx;
    int fd = nv_open_binary(s, c, err);
    if (fd < 0) return -1;
    int r = nv_check_digest(fd, c, err);
    close(fd);
    return r;
}

/* ---- run by hand: the explanation, `doctor`, and `explain --json` for the tools -------------- */

/* The decision the next launch would make, made the way a launch makes it but exhaustively
 * (every candidate hashed, nothing copied or run), as the current uid, followed by
 * sealed.no_quiet_fallback's refusal and warning. */
typedef struct {
    nv_selection s;
    char goos[65], goarch[65];
    double now;                 /* time.time() */
    int dir_ok;                 /* the plugins directory was opened and listed (else s.fatal) */
    const nv_error *refusal;    /* the launch's refusal (its ERROR line), or NULL: it runs s.chosen */
    nv_error own;
    size_t *over;               /* passed over (Selection.passed_over), indices into s.cands */
    size_t nover;
    int warns;                  /* the chosen manifest expires within NV_EXPIRY_WARNING */
    nv_buf warning;
    double days;
} dry_run;

static void dry_decide(dry_run *d, const nv_policy *p, const char *dir)
{
    memset(d, 0, sizeof *d);
    nv_host_platform(d->goos, d->goarch);
    d->s.policy = p;
    d->s.plugins_dir = dir;
    d->now = nv_clock(&d->s.now);
    d->s.uid = (unsigned)geteuid();
    d->s.goos = d->goos;
    d->s.goarch = d->goarch;
    d->s.dir_fd = -1;
    d->dir_ok = nv_select(&d->s, hash_only, NULL, 1) == 0;
    d->over = nv_xmalloc((d->s.ncands ? d->s.ncands : 1) * sizeof *d->over);
    if (!d->dir_ok) {
        d->refusal = &d->s.fatal;
        return;
    }
    d->nover = nv_passed_over(&d->s, d->over);
    if (d->s.chosen < 0) {
        nv_refusal(&d->s, &d->own);
        d->refusal = &d->own;
    } else if (nv_newer_refused(&d->s, &d->own)) {
        d->refusal = &d->own;
    } else {
        d->warns = nv_expiry_warning(&d->s, d->now, &d->warning, &d->days);
    }
}

static void dry_free(dry_run *d)
{
    nv_selection_free(&d->s);
    nv_error_clear(&d->own);
    nv_buf_free(&d->warning);
    free(d->over);
}

static int is_passed_over(const dry_run *d, size_t k)
{
    for (size_t j = 0; j < d->nover; j++)
        if (d->over[j] == k) return 1;
    return 0;
}

static void write_all(int fd, const nv_buf *b)
{
    for (size_t done = 0; done < b->n;) {
        ssize_t w = write(fd, b->p + done, b->n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
}

/* Text for a person's terminal: control characters (a file name can hold escape sequences)
 * written visibly: C0 and DEL as \xNN, and bytes that are not UTF-8 too (a terminal may take
 * a lone 0x9B for CSI); the C1 controls U+0080..U+009F as \u00NN. */
static void put_visible(nv_buf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        size_t k = s[i] < 0x80 ? 1 : nv_utf8_len(s + i, n - i);
        if (s[i] < 0x20 || s[i] == 0x7F || k == 0) {
            nv_buf_printf(b, "\\x%02x", s[i]);
            i++;
        } else if (k == 2 && s[i] == 0xC2 && s[i + 1] < 0xA0) {
            nv_buf_printf(b, "\\u%04x", s[i + 1]);
            i += 2;
        } else {
            nv_buf_put(b, s + i, k);
            i += k;
        }
    }
}

/* `L doctor` (shim/ops/doctor.py's _check_launcher_tree): the launcher, its directory and every
 * one above it must be root's and writable by nobody else (a sticky directory excepted). Vault
 * hashes the launcher's path and then executes it: whoever can write one of them can swap the
 * launcher in between and run anything as Vault. One line per problem; their number. */
static int launcher_tree(nv_buf *o)
{
    int bad = 0;
    size_t n = strlen(self_path);
    char *path = nv_xstrndup(self_path, n);
    for (int file = 1;; file = 0) {
        struct stat st;
        if (stat(path, &st) < 0) {
            nv_buf_puts(o, "doctor: FAIL: cannot check ");
            put_visible(o, path);
            nv_buf_printf(o, " (%s)\n", strerror(errno));
            bad++;
        } else if (st.st_uid != 0 || ((st.st_mode & 022) && (file || !(st.st_mode & S_ISVTX)))) {
            nv_buf_puts(o, file ? "doctor: FAIL: the launcher " : "doctor: FAIL: the launcher's directory ");
            put_visible(o, path);
            nv_buf_printf(o, " can be written by someone other than root (owner uid %u, mode %04o): Vault hashes "
                             "the launcher's path, then executes it, and a write in between runs other bytes under "
                             "the registered checksum\n  fix: chown root and chmod go-w it (ship plugin_directory "
                             "root-owned all the way up)\n", (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
            bad++;
        }
        char *slash = strrchr(path, '/');
        if (!slash || (slash == path && path[1] == 0)) break;
        if (slash == path) slash[1] = 0;        /* the root directory, last */
        else *slash = 0;
    }
    free(path);
    if (!bad) nv_buf_puts(o, "doctor: the launcher, its directory and those above it are root's and writable by "
                             "nobody else\n");
    return bad;
}

/* Run by hand (no cookie; `L`, `L doctor`, any other arguments): what this launcher is, and
 * what the next launch would do, on stderr (nothing runs). Exit status 0 when a version would
 * run, else 1; as `doctor` (vault-plugin-shim doctor's rule), 1 also when a version newer than
 * the one that runs is refused (on_refused_newer fallback), so a health check hears of it, or
 * when someone other than root can write the launcher or a directory above it. */
static int explain(const nv_policy *p, const char *dir, int doctor)
{
    nv_buf o = {0};
    nv_buf_printf(&o, "This is a vault-plugin-shim launcher (native, %s mode) for the %s plugin '",
                  p->proxy ? "proxy" : "exec", p->type);
    put_visible(&o, p->name);
    nv_buf_puts(&o, "'.\n\nIt is not meant to be run by hand. Vault (or OpenBao) runs it in place of the plugin:\n"
                    "it verifies the signed plugin versions in ");
    put_visible(&o, dir);
    nv_buf_puts(&o, " against its\nembedded trust policy and then executes the highest valid one.\n\nIts policy: "
                    "trusted keys ");
    for (size_t k = 0; k < p->nkeys; k++) {
        char hex[17];
        nv_key_id_hex(hex, p->keys[k].key_id);
        nv_buf_printf(&o, "%s%s", k ? ", " : "", hex);
    }
    nv_buf_puts(&o, ", minimum version ");
    put_visible(&o, p->min_version_text ? p->min_version_text : "none");
    nv_buf_printf(&o, ", on_refused_newer %s.\n\n", p->refuse_newer ? "refuse" : "fallback");
    nv_buf_printf(&o, "What the next launch on this node would do (as uid %u, nothing executed):\n",
                  (unsigned)geteuid());
    dry_run d;
    dry_decide(&d, p, dir);
    if (!d.dir_ok) {
        nv_buf_printf(&o, "  the plugins directory is refused: %s: ", nv_class_name(d.s.fatal.cls));
        put_visible(&o, d.s.fatal.reason);
        nv_buf_puts(&o, "\nnext launch runs: nothing (the plugins directory is refused)\n");
    } else {
        for (size_t k = 0; k < d.s.ncands; k++) {
            const nv_candidate *c = &d.s.cands[k];
            nv_buf_puts(&o, "  ");
            put_visible(&o, c->binary);
            if (c->error.cls == NV_OK) {
                nv_buf_puts(&o, ": ok, version ");
                put_visible(&o, c->manifest.version_text);
                nv_buf_puts(&o, d.s.chosen != (long)k ? "\n" : d.refusal ? " (chosen, but the launch refuses)\n"
                                                                         : " (runs)\n");
            } else {
                nv_buf_printf(&o, ": refused: %s: ", nv_class_name(c->error.cls));
                put_visible(&o, c->error.reason);
                nv_buf_putc(&o, '\n');
            }
        }
        if (d.s.chosen < 0) {
            nv_buf_printf(&o, "next launch runs: nothing (%zu candidate%s found)\n", d.s.ncands,
                          d.s.ncands == 1 ? "" : "s");
        } else if (d.refusal) {
            nv_buf_printf(&o, "next launch refuses: %s: ", nv_class_name(d.refusal->cls));
            put_visible(&o, d.refusal->reason);
            nv_buf_puts(&o, "\n  fix: ");
            put_visible(&o, nv_error_fix(d.refusal));
            nv_buf_putc(&o, '\n');
        } else {
            nv_buf_puts(&o, "next launch runs: ");
            put_visible(&o, d.s.cands[d.s.chosen].path);
            nv_buf_putc(&o, '\n');
            if (d.nover) {
                nv_buf_printf(&o, "fallback: %zu version(s) newer than ", d.nover);
                put_visible(&o, d.s.cands[d.s.chosen].manifest.version_text);
                nv_buf_puts(&o, " are present and refused: the launch falls back to it and logs an ERROR for each "
                                "(on_refused_newer: fallback)\n");
                if (doctor)
                    nv_buf_puts(&o, "doctor: FAIL (exit status 1): a newer version is refused; `L` without "
                                    "`doctor` exits 0 while a version would run\n");
            }
            if (d.warns) {
                nv_buf_puts(&o, "warning: ");
                put_visible(&o, d.warning.p + strlen("vault-plugin-shim: "));
                nv_buf_puts(&o, "\n  fix: " NV_FIX_RESIGN "\n");
            }
        }
    }
    int tree = doctor ? launcher_tree(&o) : 0;
    nv_buf_puts(&o, "\n(`");
    put_visible(&o, self_path);
    nv_buf_puts(&o, " explain --json` writes this on stdout as JSON, for `vault-plugin-shim doctor` and "
                    "`verify --launcher`.)\n");
    write_all(2, &o);
    nv_buf_free(&o);
    int rc = d.refusal || tree || (doctor && d.dir_ok && d.s.chosen >= 0 && d.nover) ? 1 : 0;
    dry_free(&d);
    return rc;
}

static void json_time(nv_buf *b, int has, int64_t ts)
{
    if (!has) {
        nv_buf_puts(b, "null");
        return;
    }
    nv_buf_putc(b, '"');
    nv_format_time(b, ts);
    nv_buf_putc(b, '"');
}

/* Diagnostic.fields(): error, reason, file, cause, fix (the empty ones left out). */
static void json_error(nv_buf *b, const nv_error *e)
{
    if (!e || e->cls == NV_OK) {
        nv_buf_puts(b, "null");
        return;
    }
    nv_buf_puts(b, "{\"error\":");
    nv_json_str(b, nv_class_name(e->cls));
    nv_buf_puts(b, ",\"reason\":");
    nv_json_str(b, e->reason);
    if (e->path && *e->path) {
        nv_buf_puts(b, ",\"file\":");
        nv_json_str(b, e->path);
    }
    if (e->cause && *e->cause) {
        nv_buf_puts(b, ",\"cause\":");
        nv_json_str(b, e->cause);
    }
    if (*nv_error_fix(e)) {
        nv_buf_puts(b, ",\"fix\":");
        nv_json_str(b, nv_error_fix(e));
    }
    nv_buf_putc(b, '}');
}

/* `L explain --json` by hand: the same decision as one JSON document on stdout (the only
 * path that writes there; shim/ops/doctor.py reads it). Exit status as explain's. */
static int explain_json(const nv_policy *p, const char *dir)
{
    dry_run d;
    dry_decide(&d, p, dir);
    nv_buf b = {0};
    nv_buf_puts(&b, "{\"schema\":\"vault-plugin-shim/explain/v1\",\"kind\":\"native\",\"launcher\":");
    nv_json_str(&b, self_path);
    nv_buf_printf(&b, ",\"uid\":%u,\"now\":%lld,\"clock\":", (unsigned)geteuid(), (long long)d.s.now);
    json_time(&b, 1, d.s.now);
    nv_buf_puts(&b, ",\"platform\":");
    nv_buf_printf(&b, "{\"os\":");
    nv_json_str(&b, d.goos);
    nv_buf_puts(&b, ",\"arch\":");
    nv_json_str(&b, d.goarch);
    nv_buf_puts(&b, "},\"policy\":{\"name\":");
    nv_json_str(&b, p->name);
    nv_buf_puts(&b, ",\"type\":");
    nv_json_str(&b, p->type);
    nv_buf_puts(&b, ",\"plugins_dir\":");
    nv_json_str(&b, dir);
    nv_buf_puts(&b, ",\"plugins_dir_as_built\":");
    nv_json_str(&b, p->plugins_dir);
    nv_buf_puts(&b, ",\"min_version\":");
    if (p->min_version_text) nv_json_str(&b, p->min_version_text);
    else nv_buf_puts(&b, "null");
    nv_buf_printf(&b, ",\"max_size\":%lld,\"on_refused_newer\":\"%s\",\"mode\":\"%s\",\"key_ids\":[",
                  (long long)p->max_size, p->refuse_newer ? "refuse" : "fallback", p->proxy ? "proxy" : "exec");
    for (size_t k = 0; k < p->nkeys; k++) {
        char hex[17];
        nv_key_id_hex(hex, p->keys[k].key_id);
        nv_buf_printf(&b, "%s\"%s\"", k ? "," : "", hex);
    }
    nv_buf_puts(&b, "]},\"directory_error\":");
    json_error(&b, d.dir_ok ? NULL : &d.s.fatal);
    nv_buf_puts(&b, ",\"candidates\":[");
    for (size_t k = 0; k < d.s.ncands; k++) {
        const nv_candidate *c = &d.s.cands[k];
        const nv_manifest *m = &c->manifest;
        int chosen = d.s.chosen == (long)k;
        nv_buf_puts(&b, k ? ",{\"binary\":" : "{\"binary\":");
        nv_json_str(&b, c->binary);
        nv_buf_puts(&b, ",\"file\":");
        nv_json_str(&b, c->path);
        nv_buf_printf(&b, ",\"verdict\":\"%s\",\"chosen\":%s,\"runs\":%s,\"passed_over\":%s,\"version\":",
                      c->error.cls == NV_OK ? "ok" : "refused", chosen ? "true" : "false",
                      chosen && !d.refusal ? "true" : "false", is_passed_over(&d, k) ? "true" : "false");
        if (c->has_manifest) {
            nv_json_str(&b, m->version_text);
            nv_buf_puts(&b, ",\"sha256\":");
            nv_json_str(&b, m->sha256);
            nv_buf_printf(&b, ",\"size\":%lld,\"issued_at\":", (long long)m->size);
            json_time(&b, 1, m->issued_at);
            nv_buf_puts(&b, ",\"expires_at\":");
            json_time(&b, m->has_expiry, m->expires_at);
            nv_buf_printf(&b, ",\"expires_soon\":%s",
                          m->has_expiry && (double)m->expires_at - d.now < NV_EXPIRY_WARNING ? "true" : "false");
        } else {
            nv_buf_puts(&b, "null,\"sha256\":null,\"size\":null,\"issued_at\":null,\"expires_at\":null,"
                            "\"expires_soon\":false");
        }
        nv_buf_puts(&b, ",\"key_id\":");
        if (c->key_index >= 0) {
            char hex[17];
            nv_key_id_hex(hex, p->keys[c->key_index].key_id);
            nv_buf_printf(&b, "\"%s\"", hex);
        } else {
            nv_buf_puts(&b, "null");
        }
        nv_buf_puts(&b, ",\"error\":");
        json_error(&b, &c->error);
        nv_buf_putc(&b, '}');
    }
    const nv_candidate *chosen = d.s.chosen >= 0 ? &d.s.cands[d.s.chosen] : NULL;
    nv_buf_puts(&b, "],\"chosen\":");
    if (chosen) nv_json_str(&b, chosen->path);
    else nv_buf_puts(&b, "null");
    nv_buf_puts(&b, ",\"version\":");
    if (chosen) nv_json_str(&b, chosen->manifest.version_text);
    else nv_buf_puts(&b, "null");
    nv_buf_puts(&b, ",\"runs\":");
    if (chosen && !d.refusal) nv_json_str(&b, chosen->path);
    else nv_buf_puts(&b, "null");
    nv_buf_puts(&b, ",\"passed_over\":[");
    for (size_t j = 0; j < d.nover; j++) {
        if (j) nv_buf_putc(&b, ',');
        nv_json_str(&b, d.s.cands[d.over[j]].path);
    }
    nv_buf_puts(&b, "],\"refusal\":");
    json_error(&b, d.refusal);
    nv_buf_puts(&b, ",\"expiry_warning\":");
    if (d.warns) {
        nv_buf_puts(&b, "{\"message\":");
        nv_json_str(&b, d.warning.p);
        nv_buf_puts(&b, ",\"file\":");
        nv_json_str(&b, chosen->path);
        nv_buf_puts(&b, ",\"expires_at\":");
        json_time(&b, 1, chosen->manifest.expires_at);
        nv_buf_printf(&b, ",\"days\":%.1f,\"fix\":\"%s\"}", d.days, NV_FIX_RESIGN);
    } else {
        nv_buf_puts(&b, "null");
    }
    int rc = d.refusal ? 1 : 0;
    nv_buf_printf(&b, ",\"exit_status\":%d}\n", rc);
    write_all(1, &b);
    nv_buf_free(&b);
    dry_free(&d);
    return rc;
}

/* sealed.no_quiet_fallback, at launch: refuse to fall back past a refused newer version when
 * the policy says so (the default runs the older one; its refusal was logged above), and warn
 * at each launch within 30 days of the chosen manifest's expiry. */
static void no_quiet_fallback(const nv_selection *s, double now)
{
    nv_error e = {0};
    if (nv_newer_refused(s, &e)) refuse(s->policy, &e);
    nv_buf m = {0};
    double days;
    if (nv_expiry_warning(s, now, &m, &days)) {
        nv_log l;
        nv_log_begin(&l, "warn", m.p, m.n);
        nv_log_fieldz(&l, "plugin", s->policy->name);
        nv_log_fieldz(&l, "file", s->cands[s->chosen].path);
        nv_log_fieldz(&l, "fix", NV_FIX_RESIGN);
        nv_log_end(&l, 2);
    }
    nv_buf_free(&m);
}

int main(int argc, char **argv, char **envp)
{
    /* Descriptors 0-2 that Vault left closed are held by close-on-exec placeholders while we
     * work, so that nothing we open lands there (a log line would go into it). At exec they
     * close again, and the plugin gets exactly the stdio Vault gave. open() takes the lowest
     * free number, so each placeholder lands on the closed slot being filled. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* Past RLIMIT_FSIZE a write raises SIGXFSZ, which kills without a line; ignored, the write
     * fails with EFBIG and the error line names the limit. */
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &ignore, &vaults_sigxfsz);
    /* No sodium_init(): the calls made here (Ed25519 verification, BLAKE2b, SHA-256,
     * sodium_memcmp, sodium_bin2hex) keep no state and pick no implementation at run time
     * (BLAKE2b's compression function starts as the portable one). sodium_init would seed the
     * random generator, with getrandom or else /dev/urandom, and abort() without a log line
     * where neither works (a scratch image under a strict seccomp profile): nothing a
     * verifier needs. It also keeps argon2 and the rest it selects out of the binary. */
    size_t plen;
    unsigned char *raw = read_policy(&plen);
    nv_policy policy;
    nv_error err = {0};
    if (nv_policy_parse(raw, plen, &policy, &err) < 0) {
        free(err.path);
        err.path = nv_xstrndup(self_path, strlen(self_path));
        nv_fail_error("vault-plugin-shim: invalid launcher policy", &err);
    }
    free(raw);
    nv_proxy_early(&policy, argc, argv, self_path);     /* proxy mode's layout; select-only mode */
    char *dir = resolve_dir(policy.plugins_dir);
    const char *cookie = strcmp(policy.type, "database") == 0 ? DATABASE_COOKIE : BACKEND_COOKIE;
    if (!cookie_is(envp, cookie)) {
        const char *other = cookie_is(envp, BACKEND_COOKIE) ? "a secret/auth"
                            : cookie_is(envp, DATABASE_COOKIE) ? "a database" : NULL;
        if (other || env_value(envp, "VAULT_BACKEND_PLUGIN") || env_value(envp, "VAULT_DATABASE_PLUGIN")) {
            /* Started by Vault (a cookie is there), but not as the type this launcher serves. */
            nv_buf m = {0}, fix = {0};
            nv_buf_printf(&m, "vault-plugin-shim: this launcher serves a %s plugin, but Vault started it as %s "
                              "plugin (its magic cookie)", policy.type, other ? other : "an unknown");
            nv_buf_printf(&fix, "register the launcher with type %s (`vault plugin register ... %s %s`), or build "
                                "one for that type", policy.type, policy.type, policy.name);
            nv_log l;
            nv_log_begin(&l, "error", m.p, m.n);
            nv_log_fieldz(&l, "plugin", policy.name);
            nv_log_fieldz(&l, "launcher", argc ? argv[0] : "launcher");
            nv_log_fieldz(&l, "fix", fix.p);
            nv_log_end(&l, 2);
            return 1;
        }
        /* By hand. Vault passes the catalog's args only with its cookie, so these are a person's
         * (or a tool's): `explain --json` for the tools, anything else (`doctor` too) explains. */
        int json = argc == 3 && strcmp(argv[1], "explain") == 0 && strcmp(argv[2], "--json") == 0;
        int doctor = argc >= 2 && strcmp(argv[1], "doctor") == 0;
        int rc = json ? explain_json(&policy, dir) : explain(&policy, dir, doctor);
        nv_policy_free(&policy);
        free(dir);
        return rc;
    }

    launch_ctx lc = {env_value(envp, "TMPDIR"), -1, NULL, 0};
    char goos[65], goarch[65];
    nv_host_platform(goos, goarch);
    nv_selection s;
    memset(&s, 0, sizeof s);
    s.policy = &policy;
    s.plugins_dir = dir;
    double now = nv_clock(&s.now);
    s.uid = (unsigned)geteuid();
    s.goos = goos;
    s.goarch = goarch;
    s.dir_fd = -1;
    if (nv_select(&s, seal_and_check, &lc, 0) < 0) refuse(&policy, &s.fatal);
    nv_log_rejections(&s, 2);
    if (s.chosen < 0) {
        nv_refusal(&s, &err);
        refuse(&policy, &err);
    }
    no_quiet_fallback(&s, now);

    nv_proxy_run(&s, lc.fd, lc.how, argc, argv, envp);  /* proxy mode and select-only mode end here */
    nv_candidate *c = &s.cands[s.chosen];
    /* A #! script's interpreter reopens it through /dev/fd/N after exec: keep it open. */
    char head[2] = {0, 0};
    int script = pread(lc.fd, head, 2, 0) == 2 && head[0] == '#' && head[1] == '!';
    if (script) fcntl(lc.fd, F_SETFD, 0);
    char **xargv = nv_xmalloc(((size_t)(argc > 0 ? argc : 1) + 1) * sizeof *xargv);
    xargv[0] = c->path;
    for (int k = 1; k < argc; k++) xargv[k] = argv[k];
    xargv[argc > 0 ? argc : 1] = NULL;
    log_start(&s, c, lc.how);
    int e = exec_fd(lc.fd, xargv, envp);
    if (strcmp(lc.how, "memfd-shared") == 0) {
        /* A shared copy we cannot execute (issue 17): our own copy, then the fallback below. */
        close(lc.fd);
        lc.no_share = 1;
        if (seal_and_check(&s, c, &lc, &err) < 0) nv_fail_error("vault-plugin-shim: cannot copy the binary", &err);
        if (script) fcntl(lc.fd, F_SETFD, 0);
        log_start(&s, c, lc.how);
        e = exec_fd(lc.fd, xargv, envp);
    }
    if (strcmp(lc.how, "memfd") == 0 && (e == EACCES || e == EPERM)) {
        /* memfd exec refused (vm.memfd_noexec=2, or an LSM): the verified bytes, not the file
         * again, into a private file, hashed again there. */
        static const char refused[] =
            "vault-plugin-shim: executing from a memfd was refused; using a private copy of the verified bytes";
        nv_log l;
        nv_log_begin(&l, "warn", refused, sizeof refused - 1);
        nv_log_fieldz(&l, "reason", strerror(e));
        nv_log_fieldz(&l, "file", c->path);
        nv_log_end(&l, 2);
        int copy = private_copy(lc.fd, (uint64_t)c->manifest.size, tmp_parent(&lc), &err);
        if (copy < 0) nv_fail_error("vault-plugin-shim: cannot make the private copy", &err);
        if (nv_check_digest(copy, c, &err) < 0) nv_fail_error("vault-plugin-shim: the private copy does not match", &err);
        close(lc.fd);
        lc.fd = copy;
        lc.how = "private-file";
        if (script) fcntl(lc.fd, F_SETFD, 0);
        e = exec_fd(lc.fd, xargv, envp);
    }
    cannot_execute(c, e, lc.how);
}
