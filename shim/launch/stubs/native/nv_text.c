/* Strings, Python-style quoting, UTF-8, times and the error plumbing of the native verifier. */
#include "nv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- memory ------------------------------------------------------------------------------ */

_Noreturn void nv_oom(void)
{
    static const char msg[] =
        "{\"@level\":\"error\",\"@message\":\"vault-plugin-shim: out of memory\","
        "\"@module\":\"vault-plugin-shim\",\"error\":\"LaunchError\",\"reason\":\"out of memory\","
        "\"fix\":\"raise the memory limit of the Vault process\"}\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(1);
}

void *nv_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) nv_oom();
    return p;
}

char *nv_xstrndup(const char *s, size_t n)
{
    char *p = nv_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static void reserve(nv_buf *b, size_t more)
{
    if (more <= b->cap - b->n && b->p) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n < more + 1) {
        if (cap > SIZE_MAX / 2) nv_oom();
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) nv_oom();
    b->p = p;
    b->cap = cap;
}

void nv_buf_put(nv_buf *b, const void *s, size_t n)
{
    reserve(b, n + 1);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void nv_buf_puts(nv_buf *b, const char *s) { nv_buf_put(b, s, strlen(s)); }
void nv_buf_putc(nv_buf *b, char c) { nv_buf_put(b, &c, 1); }

void nv_buf_printf(nv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) nv_oom();
    reserve(b, (size_t)need + 1);
    vsnprintf(b->p + b->n, (size_t)need + 1, fmt, ap2);
    va_end(ap2);
    b->n += (size_t)need;
}

char *nv_buf_take(nv_buf *b)
{
    if (!b->p) nv_buf_put(b, "", 0);
    char *p = b->p;
    b->p = NULL;
    b->n = b->cap = 0;
    return p;
}

void nv_buf_free(nv_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* ---- UTF-8 --------------------------------------------------------------------------------- */

size_t nv_utf8_len(const unsigned char *s, size_t n)
{
    size_t need, i;
    unsigned char lo = 0x80, hi = 0xBF;
    if (n == 0) return 0;
    if (s[0] < 0x80) return 1;
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

int nv_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0, k;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        if ((k = nv_utf8_len(s + i, n - i)) == 0) return 0;
        i += k;
    }
    return 1;
}

/* Decode one code point of WTF-8 (UTF-8 that may hold encoded lone surrogates, which is
 * how JSON \uD800 escapes are stored here). Returns the length, or 0 for an invalid byte. */
static size_t wtf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t k = nv_utf8_len(s, n);
    if (k == 0 && n >= 3 && s[0] == 0xED && s[1] >= 0xA0 && s[1] <= 0xBF && s[2] >= 0x80 &&
        s[2] <= 0xBF)
        k = 3;
    if (k == 0) return 0;
    if (k == 1) *cp = s[0];
    else if (k == 2) *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    else if (k == 3) *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    else *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return k;
}

/* Python's str.isprintable() for code points above ASCII, approximated without the Unicode
 * database: the controls, separators, format characters, surrogates and noncharacters that
 * are common in practice. Unassigned and private-use code points count as printable here,
 * where repr() would escape them; only the quoting of such exotic values differs. */
static int printable(uint32_t c)
{
    if (c < 0xA1) return 0;                             /* C1 controls, NBSP */
    if (c == 0xAD || c == 0x34F || c == 0x61C || c == 0x180E || c == 0x1680) return 0;
    if (c >= 0x600 && c <= 0x605) return 0;
    if (c == 0x6DD || c == 0x70F || c == 0x8E2) return 0;
    if (c >= 0x2000 && c <= 0x200F) return 0;
    if (c >= 0x2028 && c <= 0x202F) return 0;
    if (c >= 0x205F && c <= 0x206F) return 0;
    if (c == 0x3000 || c == 0xFEFF) return 0;
    if (c >= 0xD800 && c <= 0xDFFF) return 0;
    if (c >= 0xFFF9 && c <= 0xFFFB) return 0;
    if ((c & 0xFFFE) == 0xFFFE) return 0;               /* noncharacters */
    if (c >= 0xFDD0 && c <= 0xFDEF) return 0;
    if (c == 0x110BD || c == 0x110CD || (c >= 0x1D173 && c <= 0x1D17A)) return 0;
    if (c >= 0xE0000 && c <= 0xE0FFF) return 0;
    return 1;
}

void nv_repr_str(nv_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    int has_single = memchr(s, '\'', n) != NULL, has_double = memchr(s, '"', n) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    nv_buf_putc(b, quote);
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        size_t k = wtf8_decode(s + i, n - i, &c);
        if (k == 0) {               /* not text: Python would hold U+DC80+byte (surrogateescape) */
            nv_buf_printf(b, "\\udc%02x", s[i]);
            i++;
            continue;
        }
        if (c == (uint32_t)quote || c == '\\') { nv_buf_putc(b, '\\'); nv_buf_putc(b, (char)c); }
        else if (c == '\t') nv_buf_puts(b, "\\t");
        else if (c == '\n') nv_buf_puts(b, "\\n");
        else if (c == '\r') nv_buf_puts(b, "\\r");
        else if (c < 0x20 || c == 0x7F) nv_buf_printf(b, "\\x%02x", (unsigned)c);
        else if (c < 0x7F || printable(c)) nv_buf_put(b, s + i, k);
        else if (c <= 0xFF) nv_buf_printf(b, "\\x%02x", (unsigned)c);
        else if (c <= 0xFFFF) nv_buf_printf(b, "\\u%04x", (unsigned)c);
        else nv_buf_printf(b, "\\U%08x", (unsigned)c);
        i += k;
    }
    nv_buf_putc(b, quote);
}

void nv_repr_bytes(nv_buf *b, const unsigned char *s, size_t n)
{
    int has_single = memchr(s, '\'', n) != NULL, has_double = memchr(s, '"', n) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    nv_buf_putc(b, 'b');
    nv_buf_putc(b, quote);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == (unsigned char)quote || c == '\\') { nv_buf_putc(b, '\\'); nv_buf_putc(b, (char)c); }
        else if (c == '\t') nv_buf_puts(b, "\\t");
        else if (c == '\n') nv_buf_puts(b, "\\n");
        else if (c == '\r') nv_buf_puts(b, "\\r");
        else if (c < 0x20 || c >= 0x7F) nv_buf_printf(b, "\\x%02x", c);
        else nv_buf_putc(b, (char)c);
    }
    nv_buf_putc(b, quote);
}

void nv_json_str(nv_buf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)(str ? str : "");
    size_t n = strlen((const char *)s), i = 0;
    nv_buf_putc(b, '"');
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') { nv_buf_putc(b, '\\'); nv_buf_putc(b, (char)c); i++; }
        else if (c < 0x20 || c == 0x7F) { nv_buf_printf(b, "\\u%04x", c); i++; }
        else if (c < 0x80) { nv_buf_putc(b, (char)c); i++; }
        else {
            size_t k = nv_utf8_len(s + i, n - i);
            if (k) { nv_buf_put(b, s + i, k); i += k; }
            else if (n - i >= 3 && c == 0xED && s[i + 1] >= 0xA0 && s[i + 1] <= 0xBF && s[i + 2] >= 0x80 &&
                     s[i + 2] <= 0xBF) {
                nv_buf_printf(b, "\\u%04x", 0xD000u | ((unsigned)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F));
                i += 3;
            } else { nv_buf_printf(b, "\\udc%02x", c); i++; }
        }
    }
    nv_buf_putc(b, '"');
}

/* ---- times ---------------------------------------------------------------------------------- */

/* time.time(): _PyTime_AsSecondsDouble of CLOCK_REALTIME's nanoseconds. */
double nv_clock(int64_t *secs)
{
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_REALTIME, &ts);
    *secs = (int64_t)ts.tv_sec;
    if (ts.tv_nsec == 0) return (double)ts.tv_sec;
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Days since 1970-01-01, proleptic Gregorian (manifest._days_from_civil). */
int64_t nv_days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = floor_div(153 * (m + (m > 2 ? -3 : 9)) + 2, 5) + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) on glibc: %Y is not zero-padded. */
void nv_format_time(nv_buf *b, int64_t ts)
{
    int64_t days = floor_div(ts, 86400), rem = ts - days * 86400;
    int64_t z = days + 719468, era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    nv_buf_printf(b, "%lld-%02lld-%02lldT%02lld:%02lld:%02lldZ", (long long)y, (long long)m,
                  (long long)d, (long long)(rem / 3600), (long long)(rem / 60 % 60),
                  (long long)(rem % 60));
}

/* ---- errors ------------------------------------------------------------------------------- */

static const char *const CLASS_NAMES[NV_CLASS_COUNT] = {
    [NV_OK] = "",
    [NV_KEY_FORMAT] = "KeyFormatError",
    [NV_SIGNATURE_FORMAT] = "SignatureFormatError",
    [NV_UNKNOWN_KEY] = "UnknownKeyError",
    [NV_BAD_SIGNATURE] = "BadSignatureError",
    [NV_LEGACY_SIGNATURE] = "LegacySignatureError",
    [NV_MANIFEST] = "ManifestError",
    [NV_POLICY] = "PolicyError",
    [NV_REJECTED] = "RejectedError",
    [NV_UNSAFE_FILE] = "UnsafeFileError",
    [NV_FILE_TOO_LARGE] = "FileTooLargeError",
    [NV_DIGEST_MISMATCH] = "DigestMismatchError",
    [NV_WRONG_PLUGIN] = "WrongPluginError",
    [NV_EXPIRED] = "ExpiredError",
    [NV_ROLLBACK] = "RollbackError",
    [NV_AMBIGUOUS] = "AmbiguousVersionError",
    [NV_NO_VALID_VERSION] = "NoValidVersionError",
    [NV_LAUNCH] = "LaunchError",
    [NV_NEWER_REFUSED] = "NewerVersionRefusedError",
};

/* The default_fix of each class in shim/trust/errors.py and shim/launch/errors.py. */
static const char *const DEFAULT_FIXES[NV_CLASS_COUNT] = {
    [NV_KEY_FORMAT] = "use a key written by `vault-plugin-shim keygen` or `minisign -G`",
    [NV_SIGNATURE_FORMAT] = "re-sign the manifest with `vault-plugin-shim sign` or `minisign -S`",
    [NV_UNKNOWN_KEY] = "sign with a trusted key, or add its public key to the launcher policy "
                       "(`vault-plugin-shim launcher build --trusted-key ...`) and roll it out first",
    [NV_BAD_SIGNATURE] = "the manifest or its trusted comment was modified after signing; re-sign it "
                         "in release CI",
    [NV_LEGACY_SIGNATURE] = "re-sign with a current minisign (prehashed `ED` signatures are the "
                            "default since 0.8)",
    [NV_MANIFEST] = "regenerate it with `vault-plugin-shim sign`",
    [NV_POLICY] = "rebuild the launcher with `vault-plugin-shim launcher build`",
    [NV_UNSAFE_FILE] = "ship the file as a regular file owned by root (or the Vault user) with mode "
                       "0755 or stricter (0644 for manifests)",
    [NV_DIGEST_MISMATCH] = "the binary differs from the one that was signed: ship the binary and "
                           "manifest from the same release",
    [NV_WRONG_PLUGIN] = "ship the manifest that belongs to this plugin, or rebuild the launcher for it",
    [NV_EXPIRED] = "re-sign the release with a later --expires, and check the node's clock",
    [NV_ROLLBACK] = "ship a version at or above the floor; lowering the floor needs a new launcher "
                    "build and registration",
    [NV_AMBIGUOUS] = "ship one build per version (or give each its own version number); semver "
                     "ignores +build metadata when ordering",
    [NV_NO_VALID_VERSION] = "see the errors logged above for each candidate",
    [NV_NEWER_REFUSED] = "ship the newer release intact (binary, manifest and .minisig from the same "
                         "release), or remove it if the older version is meant to run",
};

const char *nv_class_name(nv_class c) { return c < NV_CLASS_COUNT ? CLASS_NAMES[c] : "?"; }

const char *nv_default_fix(nv_class c)
{
    return c < NV_CLASS_COUNT && DEFAULT_FIXES[c] ? DEFAULT_FIXES[c] : "";
}

const char *nv_error_fix(const nv_error *e) { return e->fix ? e->fix : nv_default_fix(e->cls); }

void nv_error_clear(nv_error *e)
{
    free(e->reason);
    free(e->path);
    free(e->cause);
    memset(e, 0, sizeof *e);
}

void nv_error_move(nv_error *dst, nv_error *src)
{
    nv_error_clear(dst);
    *dst = *src;
    memset(src, 0, sizeof *src);
}

void nv_fail_buf(nv_error *e, nv_class cls, const char *path, const char *fix, nv_buf *reason)
{
    nv_error_clear(e);
    e->cls = cls;
    e->reason = nv_buf_take(reason);
    e->path = path ? nv_xstrndup(path, strlen(path)) : NULL;
    e->fix = fix;
}

void nv_fail(nv_error *e, nv_class cls, const char *path, const char *fix, const char *fmt, ...)
{
    nv_buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) nv_oom();
    char *p = nv_xmalloc((size_t)need + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)need + 1, fmt, ap);
    va_end(ap);
    b.p = p;
    b.n = (size_t)need;
    b.cap = (size_t)need + 1;
    nv_fail_buf(e, cls, path, fix, &b);
}

uint64_t nv_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int nv_read_at(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}
