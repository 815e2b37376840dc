/*
 * vault-plugin-shim launcher stub: the first bytes of the file Vault registers and runs.
 *
 * The registered file is   [this stub, a static ELF][meta][code][trailer]
 * and Vault's catalog pins the sha256 of all of it. The stub only sets up a process: it
 * starts the interpreter named in `meta` on the Python `code`, with a fixed environment,
 * and hands Vault's original argv and environment to that code through a descriptor.
 * Every decision about what may run stays in Python (shim.trust), in one place.
 *
 * Why a static musl binary: it has no program interpreter (PT_INTERP) and no dynamic
 * section, so no dynamic loader runs and LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH and friends
 * mean nothing here. musl's static start-up (__init_libc) stores environ and reads the aux
 * vector; it reads no environment variable. This file calls nothing that does either
 * (no getenv, setlocale, localtime, stdio); tests/native/test_stub.py checks the link map.
 *
 * Trailer (the last 40 bytes, little-endian):
 *   "VPSHIM\0\1"  meta_offset u64  meta_length u64  code_offset u64  code_length u64
 * Offsets count from the start of the file. The layout is strict: meta starts right after
 * the stub, code right after meta, the trailer right after code; nothing is unaccounted.
 * meta = NUL-terminated strings: the interpreter's absolute path, then its flags.
 * code = a zip archive that the interpreter runs as a zipapp (checked: anything else would run
 *        as Python source).
 *
 * Context (a sealed memfd the interpreter inherits; shim/launch/stubs/__init__.py reads it):
 *   "VPCTX\0\1\0"  u32 argc, argc x (u32 len, bytes)  u32 envc, envc x (u32 len, bytes)
 *   u32 len, bytes of readlink("/proc/self/exe")
 *
 * Then: execve(interpreter, [interpreter, flags..., "/proc/self/fd/<code>",
 *              "--vault-plugin-shim-context-fd=<ctx>"], ["LC_ALL=C.UTF-8"]).
 *
 * Failures: one hclog JSON line at error on stderr, exit 1. Nothing is ever written to
 * stdout: before the go-plugin handshake it belongs to the protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Newer than musl 1.2.3's headers (Linux 6.3). */
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

#define TRAILER_SIZE 40
#define META_MAX 4096        /* interpreter path and flags; PATH_MAX is 4096 */
#define PREFIX_MAX 16        /* interpreter + flags */
#define EXE_MAX 4096

static const char TRAILER_MAGIC[8] = {'V', 'P', 'S', 'H', 'I', 'M', 0, 1};
static const char CONTEXT_MAGIC[8] = {'V', 'P', 'C', 'T', 'X', 0, 1, 0};

/* The launcher's own path, for error lines and for the context (set first thing). */
static char self_path[EXE_MAX];
static size_t self_len;

/* ---- the hclog error line ------------------------------------------------------------ */

/* Always large enough: one line holds at most one path (< 4096 bytes, each escaped to at
 * most 6) and fixed texts. put() still never writes past the end. */
static char line[32768];
static size_t line_len;

static void put(const char *s, size_t n)
{
    if (n > sizeof line - line_len)
        n = sizeof line - line_len;
    memcpy(line + line_len, s, n);
    line_len += n;
}

static void puts_(const char *s) { put(s, strlen(s)); }

static void put_digits(unsigned long v, int width)
{
    char d[24];
    int i = 0;
    do {
        d[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i < (int)sizeof d);
    while (i < width && i < (int)sizeof d)
        d[i++] = '0';
    while (i)
        put(&d[--i], 1);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t need, i;
    unsigned char lo = 0x80, hi = 0xBF;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) need = 1;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        need = 2;
        if (s[0] == 0xE0) lo = 0xA0;
        if (s[0] == 0xED) hi = 0x9F;    /* no UTF-16 surrogates */
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        need = 3;
        if (s[0] == 0xF0) lo = 0x90;
        if (s[0] == 0xF4) hi = 0x8F;    /* nothing above U+10FFFF */
    } else return 0;
    if (n < need + 1) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (i = 2; i <= need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return need + 1;
}

/* The inside of a JSON string. Bytes that are not UTF-8 (a path can hold any byte) become
 * U+FFFD, so the line stays valid JSON that Vault's hclog parser accepts. */
static void put_escaped(const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, k;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            put("\\", 1);
            put((const char *)&s[i], 1);
            i++;
        } else if (c == '\n') { put("\\n", 2); i++; }
        else if (c == '\t') { put("\\t", 2); i++; }
        else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(esc, 6);
            i++;
        } else if (c < 0x80) { put((const char *)&s[i], 1); i++; }
        else if ((k = utf8_len(&s[i], n - i)) != 0) { put((const char *)&s[i], k); i += k; }
        else { put("\\ufffd", 6); i++; }
    }
}

static void put_json(const char *s, size_t n)
{
    put("\"", 1);
    put_escaped(s, n);
    put("\"", 1);
}

static void put_field(const char *key, const char *value, size_t n)
{
    put(",\"", 2);
    puts_(key);
    put("\":", 2);
    put_json(value, n);
}

/* hclog's timestamp layout 2006-01-02T15:04:05.000000Z, computed from the clock directly:
 * gmtime would be fine too, but this keeps every libc call obviously free of TZ. */
static void put_timestamp(void)
{
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_REALTIME, &ts);
    long long secs = ts.tv_sec, days = secs / 86400, rem = secs % 86400;
    if (rem < 0) { rem += 86400; days--; }
    /* days since 1970-01-01 to a civil date (proleptic Gregorian, 400-year eras). */
    long long z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    long long y = yoe + era * 400 + (m <= 2);
    put_digits((unsigned long)y, 4); put("-", 1);
    put_digits((unsigned long)m, 2); put("-", 1);
    put_digits((unsigned long)d, 2); put("T", 1);
    put_digits((unsigned long)(rem / 3600), 2); put(":", 1);
    put_digits((unsigned long)(rem / 60 % 60), 2); put(":", 1);
    put_digits((unsigned long)(rem % 60), 2); put(".", 1);
    put_digits((unsigned long)(ts.tv_nsec / 1000), 6); put("Z", 1);
}

/* One error line (the same fields shim.goplugin.errors.Diagnostic.fields() gives), exit 1.
 * err is an errno value or 0; it becomes the "cause". */
static _Noreturn void fail(const char *message, const char *file, size_t file_len,
                           const char *reason, int err, const char *fix)
{
    line_len = 0;
    puts_("{\"@level\":\"error\",\"@message\":");
    puts_("\"vault-plugin-shim: ");
    put_escaped(message, strlen(message));
    put("\"", 1);
    puts_(",\"@module\":\"vault-plugin-shim\",\"@timestamp\":\"");
    put_timestamp();
    put("\"", 1);
    put_field("error", "StubError", 9);
    put_field("reason", reason, strlen(reason));
    put_field("file", file, file_len);
    if (err) {
        const char *cause = strerror(err);
        put_field("cause", cause, strlen(cause));
    }
    put_field("fix", fix, strlen(fix));
    put("}\n", 2);
    const char *p = line;
    size_t left = line_len;
    while (left) {
        ssize_t w = write(2, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;  /* stderr closed or broken: nothing else to tell */
        p += w;
        left -= (size_t)w;
    }
    _exit(1);
}

static const char FIX_REBUILD[] =
    "rebuild the launcher with `vault-plugin-shim launcher build` and register its new sha256";

static _Noreturn void bad_file(const char *reason)
{
    fail("the launcher file is damaged", self_path, self_len, reason, 0, FIX_REBUILD);
}

/* ---- helpers --------------------------------------------------------------------------- */

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Read exactly n bytes at off; 0 on success, -1 with errno set, or -2 at an early EOF. */
static int read_at(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return -2;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* "/proc/self/fd/" or the flag, followed by fd in decimal. */
static void format_fd(char *out, size_t size, const char *head, int fd)
{
    size_t n = strlen(head);
    char d[12];
    int i = 0;
    memcpy(out, head, n);
    do {
        d[i++] = (char)('0' + fd % 10);
        fd /= 10;
    } while (fd);
    while (i && n < size - 1) out[n++] = d[--i];
    out[n] = 0;
}

/* A memfd for the interpreter to inherit (so not close-on-exec), never executable: the
 * interpreter reads it, nothing executes it. MFD_NOEXEC_SEAL (Linux 6.3+) keeps it that
 * way and is accepted under every vm.memfd_noexec setting; older kernels reject the flag
 * with EINVAL, and there a memfd is not executable unless chmod-ed, which the seals below
 * do not need. Descriptors 0-2 are Vault's even when closed: a memfd that landed there is
 * moved up, so that the plugin later gets exactly the stdio Vault gave. */
static int make_memfd(const char *name)
{
    int fd = memfd_create(name, MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create(name, MFD_ALLOW_SEALING);
    if (fd < 0)
        fail("cannot create a memfd for the interpreter", self_path, self_len,
             "memfd_create was refused", errno,
             "allow memfd_create for the Vault process (seccomp profile or LSM policy)");
    if (fd < 3) {
        int high = fcntl(fd, F_DUPFD, 3);
        if (high < 0)
            fail("cannot move a memfd above stdio", self_path, self_len, "fcntl(F_DUPFD) failed",
                 errno, "raise the open-files limit of the Vault process");
        close(fd);
        fd = high;
    }
    return fd;
}

/* No writes, no resizing, no new seals: the interpreter reads what was hashed. */
static void seal(int fd, const char *what)
{
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
        fail("cannot seal a memfd", self_path, self_len, what, errno,
             "run on Linux 3.17 or newer with a tmpfs-backed memfd (the default)");
}

/* ---- the context memfd, written through a small buffer --------------------------------- */

static unsigned char cbuf[65536];
static size_t cbuf_len;
static int ctx_fd;

static _Noreturn void ctx_fail(int err)
{
    fail("cannot write the launch context", self_path, self_len,
         "write to the context memfd failed", err,
         "check the memory limit (memfds count against the cgroup's memory)");
}

static void ctx_flush(void)
{
    if (write_all(ctx_fd, cbuf, cbuf_len) < 0) ctx_fail(errno);
    cbuf_len = 0;
}

static void ctx_bytes(const void *p, size_t n)
{
    if (n > sizeof cbuf - cbuf_len) ctx_flush();
    if (n > sizeof cbuf) {  /* one string larger than the buffer: straight through */
        if (write_all(ctx_fd, p, n) < 0) ctx_fail(errno);
        return;
    }
    memcpy(cbuf + cbuf_len, p, n);
    cbuf_len += n;
}

static void ctx_u32(uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8),
                          (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    ctx_bytes(b, 4);
}

/* Strings in argv and envp are at most 128 KiB each (MAX_ARG_STRLEN), so u32 holds them. */
static void ctx_string(const char *s, size_t n)
{
    ctx_u32((uint32_t)n);
    ctx_bytes(s, n);
}

/* ---- main ------------------------------------------------------------------------------ */

static unsigned char meta[META_MAX];
static unsigned char copybuf[65536];

int main(int argc, char **argv, char **envp)
{
    /* 1. The executed file. /proc/self/exe is the inode the kernel is running, whatever
     *    path (or fexecve'd descriptor) Vault used; readlink gives its real path, which the
     *    Python side needs to resolve a relative plugins directory. */
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path);
    if (n < 0 || (size_t)n >= sizeof self_path) {
        int err = n < 0 ? errno : ENAMETOOLONG;
        memcpy(self_path, "/proc/self/exe", 15);
        fail("cannot find the launcher's own file", self_path, 14,
             "readlink(/proc/self/exe) failed", err, "mount /proc in the Vault container");
    }
    self_len = (size_t)n;
    self_path[n] = 0;

    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail("cannot open the launcher's own file", self_path, self_len,
             "open(/proc/self/exe) failed", errno, "mount /proc in the Vault container");
    struct stat st;
    if (fstat(fd, &st) < 0)
        fail("cannot stat the launcher's own file", self_path, self_len, "fstat failed", errno,
             "mount /proc in the Vault container");
    if (!S_ISREG(st.st_mode)) bad_file("the executed file is not a regular file");

    /* 2. The trailer, checked strictly: every byte of the file is accounted for. */
    unsigned char tr[TRAILER_SIZE];
    if ((uint64_t)st.st_size < TRAILER_SIZE) bad_file("the file is shorter than its trailer");
    uint64_t size = (uint64_t)st.st_size, payload_end = size - TRAILER_SIZE;
    int r = read_at(fd, tr, TRAILER_SIZE, payload_end);
    if (r == -1)
        fail("cannot read the launcher's own file", self_path, self_len, "read failed", errno,
             FIX_REBUILD);
    if (r == -2) bad_file("the file was truncated while being read");
    if (memcmp(tr, TRAILER_MAGIC, 8) != 0)
        bad_file("no launcher trailer at the end of the file (bad magic)");
    uint64_t meta_off = le64(tr + 8), meta_len = le64(tr + 16);
    uint64_t code_off = le64(tr + 24), code_len = le64(tr + 32);
    if (meta_off == 0 || meta_off > payload_end)
        bad_file("trailer: meta_offset is outside the file");
    if (meta_len > payload_end - meta_off)
        bad_file("trailer: meta runs past the trailer");
    if (code_off != meta_off + meta_len)
        bad_file("trailer: code does not start right after meta");
    if (code_len != payload_end - code_off)
        bad_file("trailer: code does not end right at the trailer");
    if (meta_len < 3 || meta_len > META_MAX)
        bad_file("trailer: meta_length is not between 3 and 4096");
    if (code_len == 0) bad_file("trailer: code is empty");

    /* 3. meta: NUL-terminated strings, the interpreter's absolute path first, none empty. */
    r = read_at(fd, meta, (size_t)meta_len, meta_off);
    if (r == -1)
        fail("cannot read the launcher's own file", self_path, self_len, "read failed", errno,
             FIX_REBUILD);
    if (r == -2) bad_file("the file was truncated while being read");
    if (meta[meta_len - 1] != 0) bad_file("meta: the last string is not NUL-terminated");
    char *xargv[PREFIX_MAX + 3];
    int nprefix = 0;
    for (size_t i = 0; i < meta_len;) {
        size_t len = strlen((char *)meta + i);
        if (len == 0) bad_file("meta: an empty string");
        if (nprefix == PREFIX_MAX) bad_file("meta: more than 16 strings");
        xargv[nprefix++] = (char *)meta + i;
        i += len + 1;
    }
    if (xargv[0][0] != '/') bad_file("meta: the interpreter path is not absolute");

    /* 4. code into a sealed memfd. The interpreter re-opens it by /proc/self/fd/N, so it
     *    must be inherited. Sealed, it cannot change after this point, whoever holds it. */
    int code_fd = make_memfd("vault-plugin-shim-code");
    for (uint64_t done = 0; done < code_len;) {
        size_t chunk = code_len - done < sizeof copybuf ? (size_t)(code_len - done) : sizeof copybuf;
        r = read_at(fd, copybuf, chunk, code_off + done);
        if (r == -1)
            fail("cannot read the launcher's own file", self_path, self_len, "read failed",
                 errno, FIX_REBUILD);
        if (r == -2) bad_file("the file was truncated while being read");
        if (write_all(code_fd, copybuf, chunk) < 0)
            fail("cannot copy the code into a memfd", self_path, self_len, "write failed",
                 errno, "check the memory limit (memfds count against the cgroup's memory)");
        done += chunk;
    }
    seal(code_fd, "sealing the code memfd failed");
    close(fd);
    /* The interpreter runs a file that is not a zip archive as Python source: only a zip may
     * pass (issue 17). `launcher build` writes one with no comment, so it starts with a local
     * file header and ends with the 22-byte end-of-central-directory record. Checked on the
     * sealed copy, which is what the interpreter reads. */
    unsigned char head[4], tail[4];
    if (code_len < 22 || read_at(code_fd, head, 4, 0) != 0 || read_at(code_fd, tail, 4, code_len - 22) != 0 ||
        memcmp(head, "PK\3\4", 4) != 0 || memcmp(tail, "PK\5\6", 4) != 0)
        bad_file("code: not a zip archive (no local file header, or no end record in the last 22 bytes)");

    /* 5. The context: Vault's argv and environment exactly as received, and our path. */
    ctx_fd = make_memfd("vault-plugin-shim-context");
    ctx_bytes(CONTEXT_MAGIC, 8);
    ctx_u32((uint32_t)argc);
    for (int i = 0; i < argc; i++) ctx_string(argv[i], strlen(argv[i]));
    uint32_t envc = 0;
    while (envp[envc]) envc++;
    ctx_u32(envc);
    for (uint32_t i = 0; i < envc; i++) ctx_string(envp[i], strlen(envp[i]));
    ctx_string(self_path, self_len);
    ctx_flush();
    seal(ctx_fd, "sealing the context memfd failed");

    /* 6. The interpreter, with a fixed environment and nothing inherited from Vault's:
     *    no LD_* for its dynamic loader, no OPENSSL_* for libcrypto, no PYTHON*. LC_ALL
     *    fixes the locale (so Python neither coerces it nor adds LC_CTYPE to the plugin's
     *    env). OPENSSL_CONF=/dev/null: an empty configuration, so the OpenSSL of neither
     *    the interpreter's ssl module nor cryptography's wheel reads its compiled-in
     *    openssl.cnf (/usr/lib/ssl/..., /opt/pyca/cryptography/openssl/...), where a file
     *    naming a provider module would run code in the launcher (issue 17, case 2). No
     *    PATH: argv[0] is absolute, so Python finds its prefix without it, and the plugin
     *    is started by descriptor with Vault's own environment from the context. */
    static char code_arg[32], ctx_arg[64];
    format_fd(code_arg, sizeof code_arg, "/proc/self/fd/", code_fd);
    format_fd(ctx_arg, sizeof ctx_arg, "--vault-plugin-shim-context-fd=", ctx_fd);
    xargv[nprefix] = code_arg;
    xargv[nprefix + 1] = ctx_arg;
    xargv[nprefix + 2] = 0;
    static char *const fixed_env[] = {"LC_ALL=C.UTF-8", "OPENSSL_CONF=/dev/null", 0};
    execve(xargv[0], xargv, fixed_env);
    fail("cannot start the launcher's interpreter", xargv[0], strlen(xargv[0]),
         "execve of the interpreter failed", errno,
         "install the interpreter at this path, or rebuild the launcher with "
         "`vault-plugin-shim launcher build --python <path>` and register its new sha256");
}
