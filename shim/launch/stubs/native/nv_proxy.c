/*
 * Proxy mode in the native launcher: one decision at launch, in every mode (issue 20, item 2).
 *
 * A native proxy-mode launcher is
 *   [this program][meta][code][policy][ext][trailer]
 * meta and code are what stub.c's payload carries (the interpreter's absolute path and flags,
 * NUL-terminated; a zip of the proxy's Python code), the policy is the native policy (its line
 * mode=proxy), ext is five little-endian u64 (meta_offset, meta_length, code_offset,
 * code_length, flags; flags bit 0: hot swap), and the trailer is "VPNATV\0\2" policy_offset
 * policy_length, the exec-mode trailer's shape under its own magic. Every byte is accounted for.
 *
 * At launch the native part selects, verifies and seals exactly as in exec mode (the same
 * seal_and_check, the same rejection and refusal lines), then does what stub.c does: the code
 * into a sealed memfd, Vault's argv and environment byte for byte into a sealed context memfd,
 * and execve(interpreter, [interpreter, flags..., /proc/self/fd/<code>,
 * --vault-plugin-shim-context-fd=<ctx>]) with a fixed environment. The context has the native
 * magic "VPCTX\0\2\0" and, after stub.c's fields, the verdict (shim/launch/stubs/__init__.py,
 * VERDICT_KEYS): the sealed copy's descriptor (inherited, above 2), how it was made, the file,
 * the signed manifest's fields and the key id; and for a hot-swapping launcher self_fd, a sealed
 * memfd copy of this launcher's own file (where memfds cannot be made or executed: a descriptor
 * of the file itself). The Python proxy runs that verdict and never selects.
 *
 * Select-only mode: for each hot swap rescan the proxy executes that copy of this launcher with
 * argv [launcher path, NV_PROXY_SELECT_ONLY<fd>, NV_PROXY_SKIP... ] and Vault's environment.
 * It makes the launch's decision (its lines go to stderr, which the proxy reads) and sends the
 * sealed copy (SCM_RIGHTS) with the verdict over that fd, a unix SOCK_SEQPACKET socket its
 * parent made; without such a socket it refuses with one line (catalog args cannot reach it).
 *
 * The interpreter's fixed environment is stub.c's: LC_ALL=C.UTF-8 and OPENSSL_CONF=/dev/null
 * (an empty OpenSSL configuration: neither the interpreter's libssl nor cryptography's reads
 * its compiled-in openssl.cnf, where a provider module would run code; issue 17, case 2).
 * Nothing here reads the environment (Vault's goes into the context as bytes) or writes to
 * stdout.
 */
#define _GNU_SOURCE
#include "nv_proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef SO_DOMAIN
#define SO_DOMAIN 39
#endif

static const char CONTEXT_MAGIC[8] = {'V', 'P', 'C', 'T', 'X', 0, 2, 0};
static const char FIX_REBUILD[] =
    "rebuild the launcher with `vault-plugin-shim launcher build` and register its new sha256";
static const char FIX_SKIP[] = "replace or remove this release; a changed file is tried again";
#define SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

static struct {
    int have;                   /* the file carries the Python part */
    int fd;                     /* the launcher's own file, kept from read_policy */
    uint64_t size, meta_off, meta_len, code_off, code_len;
    int hot_swap;
    char meta[NV_PROXY_META_MAX];
    const char *self_path;
    int sock;                   /* select-only mode's handover socket, or -1 */
    nv_proxy_skip skips[NV_PROXY_SKIPS_MAX];
    size_t nskips;
} px = {.fd = -1, .sock = -1};

/* ---- failing: one hclog error line (the fields of Diagnostic.fields()), exit 1 ---------------- */

static _Noreturn void damaged(const char *reason)
{
    nv_fail_launch("vault-plugin-shim: the launcher file is damaged", px.self_path, reason, 0, FIX_REBUILD);
}

static _Noreturn void no_memfd(const char *what, int err)
{
    nv_fail_launch("vault-plugin-shim: cannot start the proxy's interpreter", px.self_path, what, err,
         err == EMFILE || err == ENFILE ? "raise Vault's open-file limit (ulimit -n, systemd LimitNOFILE)"
                                        : "check the memory limit (memfds count against the cgroup's memory), and "
                                          "allow memfd_create for the Vault process (seccomp profile or LSM policy)");
}

/* ---- the layout -------------------------------------------------------------------------------- */

uint64_t nv_proxy_layout(int fd, uint64_t size, uint64_t policy_off, const char *self_path)
{
    px.self_path = self_path;
    unsigned char ext[NV_PROXY_EXT_SIZE];
    if (size < 24 + NV_PROXY_EXT_SIZE) damaged("the file is shorter than its proxy trailer");
    uint64_t end = size - 24 - NV_PROXY_EXT_SIZE;
    if (nv_read_at(fd, ext, sizeof ext, end) < 0) damaged("the proxy trailer cannot be read");
    px.meta_off = nv_le64(ext);
    px.meta_len = nv_le64(ext + 8);
    px.code_off = nv_le64(ext + 16);
    px.code_len = nv_le64(ext + 24);
    uint64_t flags = nv_le64(ext + 32);
    if (px.meta_off == 0 || px.meta_off > end || px.meta_len < 3 || px.meta_len > NV_PROXY_META_MAX ||
        px.meta_len > end - px.meta_off)
        damaged("proxy trailer: meta is outside the file or not between 3 and 4096 bytes");
    if (px.code_off != px.meta_off + px.meta_len || px.code_len < 22 || px.code_len > end - px.code_off ||
        policy_off != px.code_off + px.code_len)
        damaged("proxy trailer: meta, code and the policy do not follow each other");
    if (flags & ~(uint64_t)NV_PROXY_FLAG_HOT_SWAP) damaged("proxy trailer: unknown flags");
    px.hot_swap = (flags & NV_PROXY_FLAG_HOT_SWAP) != 0;
    /* meta: NUL-terminated strings, the interpreter's absolute path first, none empty. */
    if (nv_read_at(fd, px.meta, (size_t)px.meta_len, px.meta_off) < 0) damaged("meta cannot be read");
    if (px.meta[px.meta_len - 1] != 0) damaged("meta: the last string is not NUL-terminated");
    size_t count = 0;
    for (size_t i = 0; i < px.meta_len; i += strlen(px.meta + i) + 1) {
        if (px.meta[i] == 0) damaged("meta: an empty string");
        if (++count > NV_PROXY_PREFIX_MAX) damaged("meta: more than 16 strings");
    }
    if (px.meta[0] != '/') damaged("meta: the interpreter path is not absolute");
    px.fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (px.fd < 0)
        nv_fail_launch("vault-plugin-shim: cannot keep the launcher's own file open", self_path, "fcntl(F_DUPFD) failed",
             errno, "raise Vault's open-file limit (ulimit -n, systemd LimitNOFILE)");
    px.size = size;
    px.have = 1;
    return end;
}

/* ---- select-only mode -------------------------------------------------------------------------- */

int nv_proxy_parse_skip(const char *arg, nv_proxy_skip *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < 64; i++)
        if (!((arg[i] >= '0' && arg[i] <= '9') || (arg[i] >= 'a' && arg[i] <= 'f'))) return -1;
    if (arg[64] != ':') return -1;
    out->sha256 = arg;
    const char *p = arg + 65;
    int neg = *p == '-';
    if (neg) p++;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    int64_t v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (++digits > 15) return -1;           /* far past any manifest time (year 9999 is 12 digits) */
        v = v * 10 + (*p - '0');
    }
    if (*p++ != ':' || (neg && v == 0)) return -1;
    out->issued_at = neg ? -v : v;
    const char *colon = strchr(p, ':');
    if (!colon || colon == p) return -1;
    nv_version ver;
    if (!nv_version_parse(p, (size_t)(colon - p), &ver)) return -1;
    out->version = p;
    out->version_len = (size_t)(colon - p);
    out->reason = colon + 1;
    return *out->reason ? 0 : -1;
}

static _Noreturn void refuse_select_only(const nv_policy *p, const char *reason, int err)
{
    nv_error e = {0};
    e.cls = NV_LAUNCH;
    e.reason = nv_xstrndup(reason, strlen(reason));
    e.cause = err ? nv_xstrndup(strerror(err), strlen(strerror(err))) : NULL;
    e.fix = "select-only mode is run by a hot-swapping proxy launcher for its rescans, with a socket it made; "
            "remove this argument from the catalog's args";
    static const char m[] = "vault-plugin-shim: select-only mode refused; nothing was selected";
    nv_log l;
    nv_log_begin(&l, "error", m, sizeof m - 1);
    nv_log_fieldz(&l, "plugin", p->name);
    nv_log_error_fields(&l, &e);
    nv_log_end(&l, 2);
    _exit(1);
}

void nv_proxy_early(const nv_policy *p, int argc, char **argv, char *self_path)
{
    if (!px.self_path) px.self_path = self_path;
    if (px.have && !p->proxy) damaged("the file carries a proxy's Python part, but its policy says mode=exec");
    if (!px.have && p->proxy) damaged("the policy says mode=proxy, but the file carries no Python part");
    if (!px.have || argc < 2 || strncmp(argv[1], NV_PROXY_SELECT_ONLY, strlen(NV_PROXY_SELECT_ONLY)) != 0) return;

    /* Select-only mode: only with the handover socket our parent made. It dies with the proxy
     * thread that asked (set before the parent is checked below: no window). */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    const char *n = argv[1] + strlen(NV_PROXY_SELECT_ONLY);
    long fd = 0;
    if (*n < '0' || *n > '9') refuse_select_only(p, "the handover descriptor is not a number", 0);
    for (; *n >= '0' && *n <= '9'; n++)
        if ((fd = fd * 10 + (*n - '0')) > 1 << 20) refuse_select_only(p, "the handover descriptor is not a number", 0);
    if (*n) refuse_select_only(p, "the handover descriptor is not a number", 0);
    struct stat st;
    if (fstat((int)fd, &st) < 0) refuse_select_only(p, "no handover socket at the descriptor named", errno);
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (!S_ISSOCK(st.st_mode) || getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        (len = sizeof domain, getsockopt((int)fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) ||
        type != SOCK_SEQPACKET || domain != AF_UNIX)
        refuse_select_only(p, "the descriptor named is not a unix SOCK_SEQPACKET socket", 0);
    struct ucred cred;
    len = sizeof cred;
    if (getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid != getppid() ||
        cred.uid != geteuid())
        refuse_select_only(p, "the handover socket was not made by this process's parent (as the same user)", 0);
    if (!px.hot_swap) refuse_select_only(p, "this launcher was built without hot swap", 0);
    if (argv[0][0] != '/' || strlen(argv[0]) >= NV_PROXY_SELF_MAX)
        refuse_select_only(p, "argv[0] is not the launcher's absolute path", 0);
    for (int k = 2; k < argc; k++) {
        if (strncmp(argv[k], NV_PROXY_SKIP, strlen(NV_PROXY_SKIP)) != 0 || px.nskips == NV_PROXY_SKIPS_MAX ||
            nv_proxy_parse_skip(argv[k] + strlen(NV_PROXY_SKIP), &px.skips[px.nskips]) < 0)
            refuse_select_only(p, "an argument after the handover descriptor is not a well-formed release to skip", 0);
        px.nskips++;
    }
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    px.sock = (int)fd;
    /* The launcher's path as the launch recorded it (ours is the sealed copy's memfd name):
     * relative plugins directories resolve from it, and error lines name it. */
    strcpy(self_path, argv[0]);
}

int nv_proxy_skipped(const nv_candidate *c, nv_error *err)
{
    for (size_t k = 0; k < px.nskips; k++) {
        const nv_proxy_skip *s = &px.skips[k];
        if (memcmp(s->sha256, c->manifest.sha256, 64) == 0 && s->issued_at == c->manifest.issued_at &&
            strlen(c->manifest.version_text) == s->version_len &&
            memcmp(s->version, c->manifest.version_text, s->version_len) == 0) {
            nv_fail(err, NV_REJECTED, c->path, FIX_SKIP, "%s", s->reason);
            return 1;
        }
    }
    return 0;
}

/* ---- the verdict ------------------------------------------------------------------------------- */

static void put_u32(nv_buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    nv_buf_put(b, x, 4);
}

static void put_string(nv_buf *b, const char *s, size_t n)
{
    put_u32(b, (uint32_t)n);
    nv_buf_put(b, s, n);
}

static void put_entry(nv_buf *b, const char *key, const char *value)
{
    nv_buf e = {0};
    nv_buf_printf(&e, "%s=%s", key, value);
    put_string(b, e.p, e.n);
    nv_buf_free(&e);
}

/* The verdict entries (shim/launch/stubs/__init__.py: HANDBACK_KEYS), and with fds >= 0 the
 * descriptors too (VERDICT_KEYS). */
static void put_verdict(nv_buf *b, const nv_selection *s, const char *how, int fd, int self_fd, int with_fds)
{
    const nv_candidate *c = &s->cands[s->chosen];
    const nv_manifest *m = &c->manifest;
    char hex[17], num[32];
    nv_key_id_hex(hex, s->policy->keys[c->key_index].key_id);
    put_u32(b, with_fds ? 15 : 13);
    if (with_fds) {
        snprintf(num, sizeof num, "%d", fd);
        put_entry(b, "fd", num);
        if (self_fd >= 0) snprintf(num, sizeof num, "%d", self_fd);
        else num[0] = 0;
        put_entry(b, "self_fd", num);
    }
    put_entry(b, "how", how);
    put_entry(b, "binary", c->binary);
    put_entry(b, "file", c->path);
    put_entry(b, "name", m->name);
    put_entry(b, "type", m->type);
    put_entry(b, "version", m->version_text);
    put_entry(b, "sha256", m->sha256);
    snprintf(num, sizeof num, "%lld", (long long)m->size);
    put_entry(b, "size", num);
    put_entry(b, "os", m->os);
    put_entry(b, "arch", m->arch);
    snprintf(num, sizeof num, "%lld", (long long)m->issued_at);
    put_entry(b, "issued_at", num);
    if (m->has_expiry) snprintf(num, sizeof num, "%lld", (long long)m->expires_at);
    else num[0] = 0;
    put_entry(b, "expires_at", num);
    put_entry(b, "key_id", hex);
}

static _Noreturn void hand_back(const nv_selection *s, int fd, const char *how)
{
    nv_buf b = {0};
    put_verdict(&b, s, how, -1, -1, 0);
    struct iovec iov = {b.p, b.n};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ssize_t r;
    do r = sendmsg(px.sock, &msg, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r != (ssize_t)b.n)
        nv_fail_launch("vault-plugin-shim: select-only mode cannot hand the verified copy back", px.self_path,
             "sendmsg on the handover socket failed", r < 0 ? errno : EMSGSIZE,
             "the proxy launcher that asked has gone; nothing to do");
    _exit(0);
}

/* ---- starting the interpreter ------------------------------------------------------------------ */

/* A memfd the interpreter inherits (not close-on-exec), above stdio. */
static int inherited_memfd(const char *name, unsigned flags)
{
    int fd = memfd_create(name, MFD_ALLOW_SEALING | flags);
    if (fd < 0 && errno == EINVAL && flags)         /* before Linux 6.3: neither flag */
        fd = memfd_create(name, MFD_ALLOW_SEALING);
    if (fd >= 0 && fd < 3) {
        int high = fcntl(fd, F_DUPFD, 3);
        int saved = errno;
        close(fd);
        errno = saved;
        fd = high;
    }
    return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* bytes [off, off + len) of the launcher's own file into fd. */
static int copy_range(int fd, uint64_t off, uint64_t len)
{
    static unsigned char buf[1 << 16];
    for (uint64_t done = 0; done < len;) {
        size_t chunk = len - done < sizeof buf ? (size_t)(len - done) : sizeof buf;
        if (nv_read_at(px.fd, buf, chunk, off + done) < 0) {
            if (errno == 0) errno = EIO;
            return -1;
        }
        if (write_all(fd, buf, chunk) < 0) return -1;
        done += chunk;
    }
    return 0;
}

/* A sealed copy of this launcher's own file for select-only mode (hot swap), so that each
 * rescan runs the bytes Vault verified at launch. Where memfds cannot be made executable
 * (vm.memfd_noexec=2) or at all: a descriptor of the file itself (the inode Vault ran). */
static int self_copy(void)
{
    int fd = inherited_memfd("vault-plugin-shim-launcher", MFD_EXEC);
    if (fd < 0) {
        fd = fcntl(px.fd, F_DUPFD, 3);
        if (fd < 0) no_memfd("cannot keep a descriptor of the launcher for hot swap", errno);
        return fd;
    }
    if (copy_range(fd, 0, px.size) < 0) no_memfd("copying the launcher for hot swap failed", errno);
    if (fcntl(fd, F_ADD_SEALS, SEALS) < 0) no_memfd("sealing the launcher's copy failed", errno);
    return fd;
}

static char *fd_arg(const char *head, int fd)
{
    nv_buf b = {0};
    nv_buf_printf(&b, "%s%d", head, fd);
    return nv_buf_take(&b);
}

static _Noreturn void start_interpreter(const nv_selection *s, int fd, const char *how, int argc, char **argv,
                                        char **envp)
{
    /* The code into a sealed memfd, never executable (the interpreter reads it). */
    int code = inherited_memfd("vault-plugin-shim-code", MFD_NOEXEC_SEAL);
    if (code < 0) no_memfd("memfd_create was refused", errno);
    if (copy_range(code, px.code_off, px.code_len) < 0) no_memfd("copying the code into a memfd failed", errno);
    if (fcntl(code, F_ADD_SEALS, SEALS) < 0) no_memfd("sealing the code memfd failed", errno);
    unsigned char head[4], tail[4];
    if (nv_read_at(code, head, 4, 0) < 0 || nv_read_at(code, tail, 4, px.code_len - 22) < 0 ||
        memcmp(head, "PK\3\4", 4) != 0 || memcmp(tail, "PK\5\6", 4) != 0)
        damaged("code: not a zip archive (no local file header, or no end record in the last 22 bytes)");
    int self_fd = px.hot_swap ? self_copy() : -1;
    close(px.fd);
    /* The sealed plugin copy: the interpreter inherits it (the proxy's child runs it). */
    if (fcntl(fd, F_SETFD, 0) < 0) no_memfd("cannot hand the verified copy over", errno);

    /* The context: stub.c's (argv and environment exactly as received, our path), then the verdict. */
    nv_buf ctx = {0};
    nv_buf_put(&ctx, CONTEXT_MAGIC, 8);
    put_u32(&ctx, (uint32_t)argc);
    for (int k = 0; k < argc; k++) put_string(&ctx, argv[k], strlen(argv[k]));
    uint32_t envc = 0;
    while (envp[envc]) envc++;
    put_u32(&ctx, envc);
    for (uint32_t k = 0; k < envc; k++) put_string(&ctx, envp[k], strlen(envp[k]));
    put_string(&ctx, px.self_path, strlen(px.self_path));
    put_verdict(&ctx, s, how, fd, self_fd, 1);
    int cfd = inherited_memfd("vault-plugin-shim-context", MFD_NOEXEC_SEAL);
    if (cfd < 0) no_memfd("memfd_create was refused", errno);
    if (write_all(cfd, ctx.p, ctx.n) < 0) no_memfd("writing the launch context failed", errno);
    if (fcntl(cfd, F_ADD_SEALS, SEALS) < 0) no_memfd("sealing the context memfd failed", errno);
    nv_buf_free(&ctx);

    char *xargv[NV_PROXY_PREFIX_MAX + 3];
    int n = 0;
    for (size_t i = 0; i < px.meta_len; i += strlen(px.meta + i) + 1) xargv[n++] = px.meta + i;
    xargv[n++] = fd_arg("/proc/self/fd/", code);
    xargv[n++] = fd_arg("--vault-plugin-shim-context-fd=", cfd);
    xargv[n] = NULL;
    static char *const fixed_env[] = {"LC_ALL=C.UTF-8", "OPENSSL_CONF=/dev/null", NULL};
    execve(xargv[0], xargv, fixed_env);
    nv_fail_launch("vault-plugin-shim: cannot start the launcher's interpreter", xargv[0], "execve of the interpreter failed",
         errno, "install the interpreter at this path, or rebuild the launcher with "
                "`vault-plugin-shim launcher build --python <path>` and register its new sha256");
}

void nv_proxy_run(const nv_selection *s, int fd, const char *how, int argc, char **argv, char **envp)
{
    if (!px.have) return;
    if (px.sock >= 0) hand_back(s, fd, how);
    start_interpreter(s, fd, how, argc, argv, envp);
}
