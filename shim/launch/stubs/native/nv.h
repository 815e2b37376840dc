/*
 * The native verifier: the decision of shim/trust (minisign, manifest, policy, verify.select)
 * in C, for a launcher that needs no interpreter.
 *
 * Shape (after minisign's own source): every wire format has a parser that is a pure
 * function of bytes (nv_sig_parse, nv_manifest_parse, nv_policy_parse), every limit is a
 * named constant, and every cryptographic operation is one libsodium call. The file system
 * part (nv_select) opens the plugins directory once and every file relative to it with
 * O_NOFOLLOW, checks the open descriptor, and caps sizes before reading, as
 * shim/trust/verify.py does.
 *
 * Verdicts carry the same error class names and reason strings as the Python code, so a
 * differential test (tests/native/test_native_differential.py) can compare the two on the same
 * directories. Where a reason quotes a value, it is quoted as Python's repr() would
 * (nv_repr_str); for characters outside ASCII the C side escapes the C1 controls and
 * keeps the rest, which matches repr() for printable characters only.
 *
 * Nothing here reads the environment, loads a library or writes to stdout.
 */
#ifndef NV_H
#define NV_H

#include <stddef.h>
#include <stdint.h>

/* ---- limits (shim/trust/minisign.py, manifest.py, policy.py, verify.py) ---------------- */
#define NV_MANIFEST_MAX (64 * 1024)
#define NV_SIGNATURE_MAX (16 * 1024)
#define NV_COMMENT_MAX 1024
#define NV_TRUSTED_COMMENT_MAX 8192
#define NV_BINARY_MAX 2147483648LL          /* 2 GiB */
#define NV_POLICY_MAX (64 * 1024)
#define NV_KEYS_MAX 64
#define NV_CLOCK_SKEW 300                   /* s an issue time may lie in the future */
#define NV_JSON_DEPTH_MAX 900               /* about Python's recursion limit */
#define NV_INT_DIGITS_MAX 4300              /* Python's int/str conversion limit */
#define NV_MAX_REJECTION_LINES 10
#define NV_KEY_ID_LEN 8
#define NV_EXPIRY_WARNING (30 * 86400)      /* a launch this close to its manifest's expiry warns */

/* ---- growable strings ------------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} nv_buf;

void nv_buf_put(nv_buf *b, const void *s, size_t n);
void nv_buf_puts(nv_buf *b, const char *s);
void nv_buf_putc(nv_buf *b, char c);
void nv_buf_printf(nv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *nv_buf_take(nv_buf *b);               /* NUL-terminated, caller frees; b is reset */
void nv_buf_free(nv_buf *b);
/* Out of memory: the one failure nobody can route around. Fails closed (exit 1). */
_Noreturn void nv_oom(void);
void *nv_xmalloc(size_t n);
char *nv_xstrndup(const char *s, size_t n);

/* A JSON string that Python's json.loads turns into what Python itself would hold (os.fsdecode):
 * bytes that are not UTF-8 as \udc80+byte (surrogateescape), encoded lone surrogates as \uD8xx. */
void nv_json_str(nv_buf *b, const char *s);
/* Python's repr() of a str given as UTF-8 (lone surrogates as WTF-8), and of bytes. */
void nv_repr_str(nv_buf *b, const char *s, size_t n);
void nv_repr_bytes(nv_buf *b, const unsigned char *s, size_t n);
/* Length of the UTF-8 sequence at s (1..4), 0 if invalid (strict: no surrogates,
 * no overlongs, nothing above U+10FFFF), as Python's "utf-8" codec decides. */
size_t nv_utf8_len(const unsigned char *s, size_t n);
int nv_utf8_valid(const unsigned char *s, size_t n);
/* YYYY-MM-DDTHH:MM:SSZ of a Unix time (shim.trust.manifest.format_time). */
void nv_format_time(nv_buf *b, int64_t ts);
int64_t nv_days_from_civil(int64_t y, int64_t m, int64_t d);
/* A little-endian u64 (the launcher file's trailers). */
uint64_t nv_le64(const unsigned char *p);
/* pread exactly n bytes at off (retrying EINTR and short reads): 0, or -1 (errno set, or a
 * file that ended early). */
int nv_read_at(int fd, void *buf, size_t n, uint64_t off);

/* ---- verdicts ---------------------------------------------------------------------------- */
typedef enum {
    NV_OK = 0,
    NV_KEY_FORMAT,          /* KeyFormatError */
    NV_SIGNATURE_FORMAT,    /* SignatureFormatError */
    NV_UNKNOWN_KEY,         /* UnknownKeyError */
    NV_BAD_SIGNATURE,       /* BadSignatureError */
    NV_LEGACY_SIGNATURE,    /* LegacySignatureError */
    NV_MANIFEST,            /* ManifestError */
    NV_POLICY,              /* PolicyError */
    NV_REJECTED,            /* RejectedError */
    NV_UNSAFE_FILE,         /* UnsafeFileError */
    NV_FILE_TOO_LARGE,      /* FileTooLargeError */
    NV_DIGEST_MISMATCH,     /* DigestMismatchError */
    NV_WRONG_PLUGIN,        /* WrongPluginError */
    NV_EXPIRED,             /* ExpiredError */
    NV_ROLLBACK,            /* RollbackError */
    NV_AMBIGUOUS,           /* AmbiguousVersionError */
    NV_NO_VALID_VERSION,    /* NoValidVersionError */
    NV_LAUNCH,              /* LaunchError */
    NV_NEWER_REFUSED,       /* NewerVersionRefusedError */
    NV_CLASS_COUNT
} nv_class;

typedef struct {
    nv_class cls;
    char *reason;           /* malloc'd */
    char *path;             /* malloc'd or NULL */
    const char *fix;        /* static; NULL means the class's default fix */
    char *cause;            /* malloc'd or NULL */
} nv_error;

const char *nv_class_name(nv_class c);
const char *nv_default_fix(nv_class c);
const char *nv_error_fix(const nv_error *e);
/* Set e (freeing what it held) from a printf-style reason. */
void nv_fail(nv_error *e, nv_class cls, const char *path, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void nv_fail_buf(nv_error *e, nv_class cls, const char *path, const char *fix, nv_buf *reason);
void nv_error_clear(nv_error *e);
void nv_error_move(nv_error *dst, nv_error *src);

/* ---- minisign ------------------------------------------------------------------------------ */
typedef struct {
    unsigned char key_id[NV_KEY_ID_LEN];
    unsigned char pk[32];
} nv_pubkey;

typedef struct {
    unsigned char alg[2];
    unsigned char key_id[NV_KEY_ID_LEN];
    unsigned char sig[64];
    unsigned char global_sig[64];
    const char *trusted_comment;    /* points into the parsed bytes */
    size_t trusted_comment_len;
} nv_signature;

/* binascii.a2b_base64(strict_mode=True) of Python 3.11, including its error texts.
 * out must hold n * 3 / 4 + 3 bytes. Returns 0 and *out_len, or -1 with why (static). */
int nv_b64decode(const char *s, size_t n, unsigned char *out, size_t *out_len, nv_buf *why);
void nv_key_id_hex(char out[17], const unsigned char key_id[NV_KEY_ID_LEN]);
/* minisign.Signature.parse. path: the .minisig's path, for the error. */
int nv_sig_parse(const unsigned char *data, size_t n, const char *path, nv_signature *sig,
                 nv_error *err);
/* One base64 line of a public key (the policy's form): "Ed" || key id || pk. */
int nv_pubkey_parse_line(const char *line, size_t n, nv_pubkey *key, nv_error *err);
/* minisign.verify: legacy Ed refused, key by id, both signatures. Returns the key index. */
int nv_sig_verify(const unsigned char *data, size_t n, const nv_signature *sig,
                  const nv_pubkey *keys, size_t nkeys, const char *path, nv_error *err);

/* ---- semantic versions --------------------------------------------------------------------- */
typedef struct {
    const char *text;       /* the version as written (str(Version) gives it back) */
    size_t len;
    size_t core_len;        /* MAJOR.MINOR.PATCH */
    size_t pre_off, pre_len; /* prerelease, without the '-'; pre_len 0: none */
} nv_version;

/* Version.parse: 1 if text (len bytes) is a version; v points into text. */
int nv_version_parse(const char *text, size_t len, nv_version *v);
/* Precedence (build metadata ignored): <0, 0, >0. */
int nv_version_cmp(const nv_version *a, const nv_version *b);

/* ---- manifests -------------------------------------------------------------------------------- */
typedef struct {
    char *name, *type, *sha256, *os, *arch, *version_text;   /* malloc'd */
    nv_version version;     /* points into version_text */
    int64_t size, issued_at, expires_at;
    int has_expiry;
} nv_manifest;

/* Manifest.parse. */
int nv_manifest_parse(const unsigned char *data, size_t n, const char *path, nv_manifest *m,
                      nv_error *err);
void nv_manifest_free(nv_manifest *m);
/* parse_time: 1 and *ts, or 0 with the reason in why. */
int nv_parse_time(const char *s, size_t n, int64_t *ts, nv_buf *why);

/* ---- policy ----------------------------------------------------------------------------------- */
/*
 * The embedded policy of a native launcher (written by shim/launch/build.py, covered by
 * the registered sha256): text lines, each KEY=VALUE\n, in exactly this order:
 *   vault-plugin-shim/native-policy/v1
 *   name=NAME  type=TYPE  plugins_dir=DIR  min_version=[VERSION]  max_size=N
 *   on_refused_newer=fallback|refuse  mode=exec|proxy
 *   key=BASE64 (one to 64 lines)
 *   end
 * No other lines, no blank lines, no CR. Values hold no NUL and no newline.
 */
#define NV_POLICY_MAGIC "vault-plugin-shim/native-policy/v1"
typedef struct {
    char *name, *type, *plugins_dir, *min_version_text;   /* malloc'd; min_version_text may be NULL */
    nv_version min_version;
    int64_t max_size;
    int refuse_newer;       /* on_refused_newer=refuse: a refused newer version stops the launch */
    int proxy;              /* mode=proxy */
    nv_pubkey keys[NV_KEYS_MAX];
    size_t nkeys;
} nv_policy;

int nv_policy_parse(const unsigned char *data, size_t n, nv_policy *p, nv_error *err);
void nv_policy_free(nv_policy *p);

/* ---- the selection --------------------------------------------------------------------------- */
typedef struct {
    char *binary;           /* file name in the plugins directory */
    char *path;             /* plugins_dir/binary, for messages */
    int has_manifest;       /* parsed and signed (may still be rejected) */
    nv_manifest manifest;
    int key_index;          /* the trusted key that signed, or -1 */
    nv_error error;         /* cls NV_OK: passed so far */
    int tried;              /* its binary was checked (accept ran) */
} nv_candidate;

typedef struct {
    const nv_policy *policy;
    const char *plugins_dir;    /* resolved */
    int64_t now;
    unsigned uid;               /* root and this uid may own files */
    const char *goos, *goarch;
    int dir_fd;
    nv_candidate *cands;        /* sorted by binary name */
    size_t ncands;
    size_t *order;              /* good ones in launch order (indices into cands) */
    size_t norder;
    long chosen;                /* index into cands, or -1 */
    nv_error fatal;             /* the directory itself was refused */
} nv_selection;

/* What the caller does with a candidate whose signed manifest passed: copy and hash it
 * (launch), or only hash it (explain). 0 accepted, -1 with err set. */
typedef int (*nv_accept_fn)(nv_selection *s, nv_candidate *c, void *ctx, nv_error *err);

/* host_platform(): uname's sysname and machine in GOOS/GOARCH names. */
void nv_host_platform(char goos[65], char goarch[65]);
/* check_file_stat */
int nv_check_stat(const void *st, const char *path, int directory, unsigned uid, nv_error *err);
/* check_signed_manifest on bytes (pure; no file system). */
int nv_check_signed_manifest(const nv_policy *p, const unsigned char *man, size_t man_n,
                             const unsigned char *sig, size_t sig_n, int64_t now,
                             const char *goos, const char *goarch, const char *path,
                             nv_manifest *m, int *has_manifest, int *key_index, nv_error *err);
/* select(): rank, then accept in launch order (all of them if exhaustive). -1 only when the
 * directory itself is refused (s->fatal). */
int nv_select(nv_selection *s, nv_accept_fn accept, void *ctx, int exhaustive);
void nv_selection_free(nv_selection *s);
/* Open the binary relative to the directory and check it against the manifest's size
 * (PluginDir.open_binary). Returns an fd or -1 with err. */
int nv_open_binary(nv_selection *s, nv_candidate *c, nv_error *err);
/* sha256 of the first size bytes of fd, compared with the manifest (check_digest). */
int nv_check_digest(int fd, nv_candidate *c, nv_error *err);
/* SHA-256 of the first size bytes of fd (nv_sha256.c: Nettle, the CPU's SHA instructions where it
 * has them), read on a second thread where it can (*one_thread = 1 where none could start).
 * 0, or -1 with errno. */
int nv_sha256_fd(int fd, uint64_t size, unsigned char out[32], int *one_thread);
/* Copies the first size bytes of src onto dst (empty, at offset 0) through buffers of its own
 * and hashes the bytes it writes (dst -1: hashes only), on two threads where it can
 * (*one_thread = 1 where a second thread could not start). 0; -1 with errno; -2 where src
 * holds fewer bytes. Only for a dst nobody else can write: nv_sha256.c says why that holds in
 * the launcher. */
int nv_copy_sha256(int src, int dst, uint64_t size, unsigned char out[32], int *one_thread);
/* The copy alone, on this thread (the private-copy fallback: a file, hashed once unlinked).
 * 0; -1 with errno; -2 where src holds fewer bytes. */
int nv_copy_fd(int src, int dst, uint64_t size);
/* The digest compared with the manifest's sha256 (check_digest's comparison). */
int nv_digest_matches(nv_candidate *c, const unsigned char digest[32], nv_error *err);
/* The refusal when nothing passed (Selection.refusal). */
void nv_refusal(const nv_selection *s, nv_error *err);
/* Selection.passed_over: the refused candidates that would have run before the chosen one (a
 * newer version, or one whose version is unknown); all refused ones when nothing was chosen.
 * Indices into s->cands, in name order, into out (room for s->ncands; NULL: only count). */
size_t nv_passed_over(const nv_selection *s, size_t *out);
/* sealed.no_quiet_fallback, its refusal: 1 with err set (NewerVersionRefusedError) when a
 * version was chosen, the policy says on_refused_newer=refuse and a version was passed over. */
int nv_newer_refused(const nv_selection *s, nv_error *err);
/* The time as Python's time.time() gives it (a double from CLOCK_REALTIME's nanoseconds);
 * *secs: its whole seconds (what the selection compares with). */
double nv_clock(int64_t *secs);
/* sealed.no_quiet_fallback, its warning: 1 when the chosen version's manifest expires within
 * NV_EXPIRY_WARNING of now (Python's clock value), with the WARN line's message (the same
 * text, "in X.X days" included) in message and the days left in *days. */
int nv_expiry_warning(const nv_selection *s, double now, nv_buf *message, double *days);
#define NV_FIX_RESIGN "re-sign the same binary with a later --expires (or none) and ship the new manifest and .minisig"

/* ---- hclog lines on stderr --------------------------------------------------------------------- */
typedef struct {
    nv_buf line;
} nv_log;

void nv_log_begin(nv_log *l, const char *level, const char *message, size_t message_len);
void nv_log_field(nv_log *l, const char *key, const char *value, size_t n);
void nv_log_fieldz(nv_log *l, const char *key, const char *value);
void nv_log_error_fields(nv_log *l, const nv_error *e);
void nv_log_end(nv_log *l, int fd);         /* writes and frees */
/* The rejection lines of one selection (sealed.log_rejections). */
void nv_log_rejections(const nv_selection *s, int fd);
/* The WARN where nv_copy_sha256 (copying 1) or nv_sha256_fd (copying 0) could start no second
 * thread for file: slower, not less safe, and the pids limit to raise. */
void nv_log_one_thread(int copying, const char *file);
/* One hclog error line (message and the error's fields) on stderr, then exit 1. */
_Noreturn void nv_fail_error(const char *message, const nv_error *e);
/* The same for a LaunchError built here: reason, file, strerror(err) as the cause (0: none), fix. */
_Noreturn void nv_fail_launch(const char *message, const char *path, const char *reason, int err, const char *fix);

#endif
