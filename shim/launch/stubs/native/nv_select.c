/*
 * Which version may run (shim/trust/verify.py): the plugins directory opened once, every
 * file opened relative to it with O_NOFOLLOW and checked on the open descriptor (never by
 * path), sizes capped before reading, the signature checked before the manifest is parsed,
 * candidates ranked by version precedence and signed issue time.
 */
#include "nv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

static const char MANIFEST_SUFFIX[] = ".manifest.json";
/* Where shim/trust/verify.py says "make it readable by the Vault user" for any OSError, an
 * open refused for want of descriptors gets the fix that helps (issue 17: tiny rlimits). */
static const char FIX_NOFILE[] = "raise Vault's open-file limit (ulimit -n, systemd LimitNOFILE)";
#define FIX_UNREADABLE(e) ((e) == EMFILE || (e) == ENFILE ? FIX_NOFILE : "make it readable by the Vault user")
static const char SIGNATURE_SUFFIX[] = ".manifest.json.minisig";

void nv_host_platform(char goos[65], char goarch[65])
{
    static const char *const GOARCH[][2] = {
        {"x86_64", "amd64"}, {"amd64", "amd64"}, {"aarch64", "arm64"}, {"arm64", "arm64"},
        {"i686", "386"}, {"i386", "386"}, {"armv7l", "arm"}, {"ppc64le", "ppc64le"},
        {"s390x", "s390x"}, {"riscv64", "riscv64"},
    };
    struct utsname u;
    memset(&u, 0, sizeof u);
    uname(&u);
    size_t k;
    for (k = 0; k < 64 && u.sysname[k]; k++)
        goos[k] = (char)(u.sysname[k] >= 'A' && u.sysname[k] <= 'Z' ? u.sysname[k] + 32 : u.sysname[k]);
    goos[k] = 0;
    for (k = 0; k < 64 && u.machine[k]; k++)
        goarch[k] = (char)(u.machine[k] >= 'A' && u.machine[k] <= 'Z' ? u.machine[k] + 32 : u.machine[k]);
    goarch[k] = 0;
    for (k = 0; k < sizeof GOARCH / sizeof GOARCH[0]; k++)
        if (strcmp(goarch, GOARCH[k][0]) == 0) {
            strcpy(goarch, GOARCH[k][1]);
            break;
        }
}

int nv_check_stat(const void *stp, const char *path, int directory, unsigned uid, nv_error *err)
{
    const struct stat *st = stp;
    if (directory ? !S_ISDIR(st->st_mode) : !S_ISREG(st->st_mode)) {
        nv_fail(err, NV_UNSAFE_FILE, path, NULL, "is not %s", directory ? "a directory" : "a regular file");
        return -1;
    }
    /* shim.trust.verify.DIRECTORY_FIX */
    const char *fix = directory ? "make the plugins directory owned by root (or the Vault user) and writable only "
                                  "by its owner: chmod 0755 it (a umask such as 002 makes 0775)"
                                : NULL;
    if (st->st_uid != 0 && st->st_uid != uid) {
        nv_fail(err, NV_UNSAFE_FILE, path, fix,
                "is owned by uid %u, not by root or the Vault user (uid %u)", (unsigned)st->st_uid, uid);
        return -1;
    }
    if (st->st_mode & 022) {
        nv_fail(err, NV_UNSAFE_FILE, path, fix, "is writable by group or others (mode %04o)",
                (unsigned)(st->st_mode & 07777));
        return -1;
    }
    return 0;
}

static char *join(const char *dir, const char *name)
{
    nv_buf b = {0};
    nv_buf_puts(&b, dir);
    if (!b.n || b.p[b.n - 1] != '/') nv_buf_putc(&b, '/');
    nv_buf_puts(&b, name);
    return nv_buf_take(&b);
}

/* PluginDir._open */
static int open_rel(nv_selection *s, const char *name, const char *path, nv_error *err)
{
    int fd = openat(s->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd >= 0) return fd;
    if (errno == ENOENT)
        nv_fail(err, NV_REJECTED, path, "ship the binary, its manifest and the .minisig side by side",
                "is missing");
    else if (errno == ELOOP)
        nv_fail(err, NV_UNSAFE_FILE, path, "copy the real file into the plugins directory",
                "is a symbolic link; the launcher does not follow links");
    else
        nv_fail(err, NV_REJECTED, path, FIX_UNREADABLE(errno), "cannot be opened (%s)", strerror(errno));
    return -1;
}

/* PluginDir.read_small: the size is checked on the descriptor before anything is read. */
static unsigned char *read_small(nv_selection *s, const char *name, size_t limit, size_t *len,
                                 nv_error *err)
{
    char *path = join(s->plugins_dir, name);
    unsigned char *data = NULL;
    int fd = open_rel(s, name, path, err);
    if (fd < 0) goto out;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        nv_fail(err, NV_REJECTED, path, "make it readable by the Vault user", "cannot be opened (%s)",
                strerror(errno));
        goto out;
    }
    if (nv_check_stat(&st, path, 0, s->uid, err) < 0) goto out;
    if ((uint64_t)st.st_size > limit) {
        nv_fail(err, NV_FILE_TOO_LARGE, path, "this is not a manifest or signature written by vault-plugin-shim",
                "is %lld bytes, more than the %zu-byte limit", (long long)st.st_size, limit);
        goto out;
    }
    data = nv_xmalloc(limit + 1);
    size_t got = 0;
    while (got < limit + 1) {
        ssize_t r = read(fd, data + got, limit + 1 - got);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r < 0) {
            nv_fail(err, NV_REJECTED, path, "make it readable by the Vault user", "cannot be read (%s)",
                    strerror(errno));
            free(data);
            data = NULL;
            goto out;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    if (got > limit) {
        nv_fail(err, NV_FILE_TOO_LARGE, path, NULL, "grew past the %zu-byte limit while being read", limit);
        free(data);
        data = NULL;
        goto out;
    }
    *len = got;
out:
    if (fd >= 0) close(fd);
    free(path);
    return data;
}

/* _check_manifest_against */
static int check_against(const nv_policy *p, const nv_manifest *m, int64_t now, const char *goos,
                         const char *goarch, const char *path, nv_error *err)
{
    nv_buf b = {0};
    if (strcmp(m->name, p->name) != 0 || strcmp(m->type, p->type) != 0) {
        nv_buf_printf(&b, "manifest is for %s plugin ", m->type);
        nv_repr_str(&b, m->name, strlen(m->name));
        nv_buf_printf(&b, ", this launcher serves %s plugin ", p->type);
        nv_repr_str(&b, p->name, strlen(p->name));
        nv_fail_buf(err, NV_WRONG_PLUGIN, path, NULL, &b);
        return -1;
    }
    if (strcmp(m->os, goos) != 0 || strcmp(m->arch, goarch) != 0) {
        nv_fail(err, NV_WRONG_PLUGIN, path, "ship the build for this node's platform",
                "manifest is for %s/%s, this node is %s/%s", m->os, m->arch, goos, goarch);
        return -1;
    }
    if (p->min_version_text && nv_version_cmp(&m->version, &p->min_version) < 0) {
        nv_fail(err, NV_ROLLBACK, path, NULL, "version %s is below the minimum version %s", m->version_text,
                p->min_version_text);
        return -1;
    }
    if (m->has_expiry && now >= m->expires_at) {
        nv_buf_printf(&b, "manifest for %s expired at ", m->version_text);
        nv_format_time(&b, m->expires_at);
        nv_buf_puts(&b, " (node clock: ");
        nv_format_time(&b, now);
        nv_buf_putc(&b, ')');
        nv_fail_buf(err, NV_EXPIRED, path, NULL, &b);
        return -1;
    }
    if (m->issued_at > now + NV_CLOCK_SKEW) {
        nv_buf_printf(&b, "manifest for %s is issued at ", m->version_text);
        nv_format_time(&b, m->issued_at);
        nv_buf_puts(&b, ", in the future of this node's clock (");
        nv_format_time(&b, now);
        nv_buf_putc(&b, ')');
        nv_fail_buf(err, NV_EXPIRED, path, "fix the node's clock (NTP), or the signing machine's", &b);
        return -1;
    }
    if (m->size > p->max_size) {
        nv_fail(err, NV_FILE_TOO_LARGE, path, "raise max_size in a new launcher build",
                "binary size %lld exceeds the policy's max_size %lld", (long long)m->size,
                (long long)p->max_size);
        return -1;
    }
    return 0;
}

int nv_check_signed_manifest(const nv_policy *p, const unsigned char *man, size_t man_n,
                             const unsigned char *sig, size_t sig_n, int64_t now,
                             const char *goos, const char *goarch, const char *path,
                             nv_manifest *m, int *has_manifest, int *key_index, nv_error *err)
{
    *has_manifest = 0;
    *key_index = -1;
    char *sig_path = nv_xmalloc(strlen(path) + 9);
    strcpy(sig_path, path);
    strcat(sig_path, ".minisig");
    nv_signature parsed;
    int k = -1;
    if (nv_sig_parse(sig, sig_n, sig_path, &parsed, err) == 0)
        k = nv_sig_verify(man, man_n, &parsed, p->keys, p->nkeys, sig_path, err);
    free(sig_path);
    if (k < 0) return -1;
    /* Signed: only now are the bytes interpreted. */
    if (nv_manifest_parse(man, man_n, path, m, err) < 0) return -1;
    *has_manifest = 1;      /* even when refused below: its version still orders the verdicts */
    *key_index = k;
    return check_against(p, m, now, goos, goarch, path, err);
}

static int cmp_names(const void *a, const void *b)
{
    const nv_candidate *x = a, *y = b;
    return strcmp(x->binary, y->binary);
}

/* PluginDir.candidates: NAME for every NAME.manifest.json, sorted. */
static int list_candidates(nv_selection *s)
{
    int dup = fcntl(s->dir_fd, F_DUPFD_CLOEXEC, 3);
    DIR *d = dup >= 0 ? fdopendir(dup) : NULL;
    if (!d) {
        if (dup >= 0) close(dup);
        nv_fail(&s->fatal, NV_NO_VALID_VERSION, s->plugins_dir, FIX_UNREADABLE(errno),
                "cannot list the plugins directory (%s)", strerror(errno));
        return -1;
    }
    rewinddir(d);
    size_t cap = 0, sl = strlen(MANIFEST_SUFFIX);
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < sl || memcmp(e->d_name + n - sl, MANIFEST_SUFFIX, sl) != 0) continue;
        if (s->ncands == cap) {
            cap = cap ? cap * 2 : 16;
            nv_candidate *nc = realloc(s->cands, cap * sizeof *nc);
            if (!nc) nv_oom();
            s->cands = nc;
        }
        nv_candidate *c = &s->cands[s->ncands++];
        memset(c, 0, sizeof *c);
        c->binary = nv_xstrndup(e->d_name, n - sl);
        c->path = join(s->plugins_dir, c->binary);
        c->key_index = -1;
    }
    closedir(d);
    if (s->ncands) qsort(s->cands, s->ncands, sizeof *s->cands, cmp_names);   /* qsort(NULL, 0) is UB */
    return 0;
}

static void check_candidate(nv_selection *s, nv_candidate *c)
{
    size_t bl = strlen(c->binary);
    char *man_name = nv_xmalloc(bl + sizeof SIGNATURE_SUFFIX);
    char *sig_name = nv_xmalloc(bl + sizeof SIGNATURE_SUFFIX);
    memcpy(man_name, c->binary, bl);
    strcpy(man_name + bl, MANIFEST_SUFFIX);
    memcpy(sig_name, c->binary, bl);
    strcpy(sig_name + bl, SIGNATURE_SUFFIX);
    char *man_path = join(s->plugins_dir, man_name);
    size_t man_n = 0, sig_n = 0;
    unsigned char *man = read_small(s, man_name, NV_MANIFEST_MAX, &man_n, &c->error);
    unsigned char *sig = man ? read_small(s, sig_name, NV_SIGNATURE_MAX, &sig_n, &c->error) : NULL;
    if (man && sig) {
        if (nv_check_signed_manifest(s->policy, man, man_n, sig, sig_n, s->now, s->goos, s->goarch,
                                     man_path, &c->manifest, &c->has_manifest, &c->key_index,
                                     &c->error) < 0 && !c->has_manifest)
            nv_manifest_free(&c->manifest);
    }
    free(man);
    free(sig);
    free(man_path);
    free(man_name);
    free(sig_name);
}

static const nv_selection *sort_ctx;

/* Launch order: precedence, then issue time, highest first; equal keys keep name order. */
static int cmp_launch(const void *a, const void *b)
{
    size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
    const nv_manifest *ma = &sort_ctx->cands[ia].manifest, *mb = &sort_ctx->cands[ib].manifest;
    int c = nv_version_cmp(&mb->version, &ma->version);
    if (c) return c;
    if (ma->issued_at != mb->issued_at) return ma->issued_at > mb->issued_at ? -1 : 1;
    return ia < ib ? -1 : ia > ib;
}

static int same_key(const nv_candidate *a, const nv_candidate *b)
{
    return nv_version_cmp(&a->manifest.version, &b->manifest.version) == 0 &&
           a->manifest.issued_at == b->manifest.issued_at;
}

int nv_select(nv_selection *s, nv_accept_fn accept, void *ctx, int exhaustive)
{
    s->chosen = -1;
    s->dir_fd = open(s->plugins_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0) {
        if (errno == ENOENT)
            nv_fail(&s->fatal, NV_NO_VALID_VERSION, s->plugins_dir,
                    "ship the plugin versions in the image at this path, or rebuild the launcher with the "
                    "right --plugins-dir", "the plugins directory does not exist");
        else
            nv_fail(&s->fatal, NV_NO_VALID_VERSION, s->plugins_dir, FIX_UNREADABLE(errno),
                    "cannot open the plugins directory (%s)", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(s->dir_fd, &st) < 0 || nv_check_stat(&st, s->plugins_dir, 1, s->uid, &s->fatal) < 0) {
        if (s->fatal.cls == NV_OK)
            nv_fail(&s->fatal, NV_NO_VALID_VERSION, s->plugins_dir, NULL, "cannot stat the plugins directory");
        return -1;
    }
    if (list_candidates(s) < 0) return -1;
    s->order = nv_xmalloc((s->ncands ? s->ncands : 1) * sizeof *s->order);
    for (size_t k = 0; k < s->ncands; k++) {
        check_candidate(s, &s->cands[k]);
        if (s->cands[k].error.cls == NV_OK) s->order[s->norder++] = k;
    }
    sort_ctx = s;
    if (s->norder) qsort(s->order, s->norder, sizeof *s->order, cmp_launch);
    sort_ctx = NULL;
    /* Equal precedence and issue time: nothing tells which is newer, so refuse both. */
    for (size_t k = 0; k + 1 < s->norder; k++) {
        nv_candidate *a = &s->cands[s->order[k]], *b = &s->cands[s->order[k + 1]];
        if (!same_key(a, b)) continue;
        nv_candidate *pair[2][2] = {{a, b}, {b, a}};
        for (int j = 0; j < 2; j++) {
            nv_candidate *c = pair[j][0], *other = pair[j][1];
            nv_fail(&c->error, NV_AMBIGUOUS, c->path, NULL,
                    "version %s has the same precedence and issue time as %s (%s); the launcher cannot "
                    "tell which is newer", c->manifest.version_text, other->binary, other->manifest.version_text);
        }
    }
    size_t good = 0;
    for (size_t k = 0; k < s->norder; k++)
        if (s->cands[s->order[k]].error.cls == NV_OK) s->order[good++] = s->order[k];
    s->norder = good;
    for (size_t k = 0; k < s->norder; k++) {
        if (s->chosen >= 0 && !exhaustive) break;
        nv_candidate *c = &s->cands[s->order[k]];
        c->tried = 1;
        if (accept(s, c, ctx, &c->error) < 0) {
            if (c->error.cls == NV_OK)
                nv_fail(&c->error, NV_REJECTED, c->path,
                        "nothing of it was run; report this as a vault-plugin-shim bug",
                        "could not be checked (an unexpected error)");
            continue;
        }
        if (s->chosen < 0) s->chosen = (long)s->order[k];
    }
    return 0;
}

void nv_selection_free(nv_selection *s)
{
    for (size_t k = 0; k < s->ncands; k++) {
        free(s->cands[k].binary);
        free(s->cands[k].path);
        nv_manifest_free(&s->cands[k].manifest);
        nv_error_clear(&s->cands[k].error);
    }
    free(s->cands);
    free(s->order);
    nv_error_clear(&s->fatal);
    if (s->dir_fd >= 0) close(s->dir_fd);
    s->cands = NULL;
    s->order = NULL;
    s->ncands = s->norder = 0;
    s->dir_fd = -1;
}

int nv_open_binary(nv_selection *s, nv_candidate *c, nv_error *err)
{
    int fd = open_rel(s, c->binary, c->path, err);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        nv_fail(err, NV_REJECTED, c->path, "make it readable by the Vault user", "cannot be opened (%s)",
                strerror(errno));
        close(fd);
        return -1;
    }
    if (nv_check_stat(&st, c->path, 0, s->uid, err) < 0) {
        close(fd);
        return -1;
    }
    if ((int64_t)st.st_size != c->manifest.size) {
        nv_fail(err, NV_DIGEST_MISMATCH, c->path, NULL, "is %lld bytes, the signed manifest says %lld",
                (long long)st.st_size, (long long)c->manifest.size);
        close(fd);
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}

int nv_check_digest(int fd, nv_candidate *c, nv_error *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        nv_fail(err, NV_REJECTED, c->path, NULL, "cannot be hashed (%s)", strerror(errno));
        return -1;
    }
    if ((int64_t)st.st_size != c->manifest.size) {
        nv_fail(err, NV_DIGEST_MISMATCH, c->path, NULL, "copied %lld bytes, the signed manifest says %lld",
                (long long)st.st_size, (long long)c->manifest.size);
        return -1;
    }
    unsigned char digest[32];
    int one_thread = 0;
    if (nv_sha256_fd(fd, (uint64_t)st.st_size, digest, &one_thread) < 0) {     /* nv_sha256.c: Nettle */
        nv_fail(err, NV_REJECTED, c->path, NULL, "cannot be hashed (%s)", strerror(errno));
        return -1;
    }
    if (one_thread) nv_log_one_thread(0, c->path);
    return nv_digest_matches(c, digest, err);
}

int nv_digest_matches(nv_candidate *c, const unsigned char digest[32], nv_error *err)
{
    char hex[2 * 32 + 1];
    sodium_bin2hex(hex, sizeof hex, digest, 32);
    if (sodium_memcmp(hex, c->manifest.sha256, 64) != 0) {
        nv_fail(err, NV_DIGEST_MISMATCH, c->path, NULL, "sha256 is %s, the signed manifest says %s", hex,
                c->manifest.sha256);
        return -1;
    }
    return 0;
}

void nv_refusal(const nv_selection *s, nv_error *err)
{
    nv_buf b = {0};
    nv_buf_printf(&b, "no version of %s plugin ", s->policy->type);
    nv_repr_str(&b, s->policy->name, strlen(s->policy->name));
    nv_buf_printf(&b, " passed verification (%zu candidate%s found)", s->ncands, s->ncands != 1 ? "s" : "");
    nv_fail_buf(err, NV_NO_VALID_VERSION, s->plugins_dir,
                s->ncands == 0 ? "ship a signed version: BINARY, BINARY.manifest.json and "
                                 "BINARY.manifest.json.minisig"
                               : "see the error logged above for each candidate",
                &b);
}

size_t nv_passed_over(const nv_selection *s, size_t *out)
{
    const nv_candidate *chosen = s->chosen >= 0 ? &s->cands[s->chosen] : NULL;
    size_t n = 0;
    for (size_t k = 0; k < s->ncands; k++) {
        const nv_candidate *c = &s->cands[k];
        if (c->error.cls == NV_OK) continue;
        if (chosen && c->has_manifest) {     /* launch_order(c) > launch_order(chosen) */
            int v = nv_version_cmp(&c->manifest.version, &chosen->manifest.version);
            if (v < 0 || (v == 0 && c->manifest.issued_at <= chosen->manifest.issued_at)) continue;
        }
        if (out) out[n] = k;
        n++;
    }
    return n;
}

int nv_newer_refused(const nv_selection *s, nv_error *err)
{
    if (s->chosen < 0 || !s->policy->refuse_newer) return 0;
    size_t *over = nv_xmalloc((s->ncands ? s->ncands : 1) * sizeof *over);
    size_t n = nv_passed_over(s, over);
    if (n)
        nv_fail(err, NV_NEWER_REFUSED, s->cands[over[0]].path, NULL,
                "%zu version(s) newer than %s are present and refused, and this launcher's policy refuses to "
                "fall back (on_refused_newer: refuse)", n, s->cands[s->chosen].manifest.version_text);
    free(over);
    return n != 0;
}

int nv_expiry_warning(const nv_selection *s, double now, nv_buf *message, double *days)
{
    if (s->chosen < 0) return 0;
    const nv_candidate *c = &s->cands[s->chosen];
    if (!c->manifest.has_expiry) return 0;
    double left = (double)c->manifest.expires_at - now;    /* expires_soon(): Python's int - float */
    if (left >= NV_EXPIRY_WARNING) return 0;
    *days = left / 86400;
    nv_buf_printf(message, "vault-plugin-shim: %s plugin %s %s expires at ", s->policy->type, s->policy->name,
                  c->manifest.version_text);
    nv_format_time(message, c->manifest.expires_at);
    /* "{left / 86400:.1f}": printf's %.1f rounds the same double the same way (exactly, ties to even). */
    nv_buf_printf(message, ", in %.1f days: after that no launcher starts it", *days);
    return 1;
}
