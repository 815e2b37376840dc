/*
 * Unit tests of the native verifier's pure parts. tests/native/test_native_unit.py builds this with
 * clang under ASan and UBSan (-Wall -Wextra -Werror) and runs it; it prints
 * "N passed, N failed" and exits non-zero on any failure.
 *
 * The fixed vectors (a key with seed 00..1f and key id 01..08, and its minisign signature
 * of a small file) were made once with shim.trust.minisign, which the differential test
 * holds to minisign's own format.
 */
#include "nv.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) passed++;                                                          \
        else { failed++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
    } while (0)

#define CHECK_STR(got, want)                                                         \
    do {                                                                             \
        const char *g_ = (got), *w_ = (want);                                        \
        if (g_ && strcmp(g_, w_) == 0) passed++;                                     \
        else { failed++; fprintf(stderr, "%s:%d: got [%s], want [%s]\n", __FILE__, __LINE__, g_ ? g_ : "(null)", w_); } \
    } while (0)

static const char PK[] = "RWQBAgMEBQYHCAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
static const char DATA[] = "{\"hello\": 1}\n";
static const char SIG[] =
    "untrusted comment: signature from vault-plugin-shim\n"
    "RUQBAgMEBQYHCH9xXe5d77mw2DOyYY/GKMMP9lj1cJRHqJjK/ogYxbgQiMflGh9W1mnTGcH3iFWHRI1xiQvGOYJA1H8IBKGaFQg=\n"
    "trusted comment: unit test\n"
    "r/vgGqHNwX57uECnFMGjeb617MKfzPBvl39C5Nelh4XCKaUofYITfF7490lRbQqfzkwqmXe+9TuPBpLFp/fyCw==\n";

static void test_base64(void)
{
    unsigned char out[64];
    size_t n;
    nv_buf why = {0};
    CHECK(nv_b64decode("QUJD", 4, out, &n, &why) == 0 && n == 3 && memcmp(out, "ABC", 3) == 0);
    CHECK(nv_b64decode("QUI=", 4, out, &n, &why) == 0 && n == 2);     /* non-zero tail bits: Python takes it */
    CHECK(nv_b64decode("QUJD==", 6, out, &n, &why) == 0 && n == 3);   /* '=' after a full quad: skipped */
    const struct { const char *in, *why; } bad[] = {
        {"=QUJD", "Leading padding not allowed"},
        {"QUJDRA", "Incorrect padding"},
        {"QUJDR", "Invalid base64-encoded string: number of data characters (5) cannot be 1 more than a multiple of 4"},
        {"QU=D", "Discontinuous padding not allowed"},
        {"QUJ==", "Excess data after padding"},
        {"QU JD", "Only base64 data is allowed"},
        {"QU\xc3\xa9", "'ascii' codec can't encode character '\\xe9' in position 2: ordinal not in range(128)"},
        {"\xe2\x82\xac\xe2\x82\xac", "'ascii' codec can't encode characters in position 0-1: ordinal not in range(128)"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        nv_buf_free(&why);
        CHECK(nv_b64decode(bad[k].in, strlen(bad[k].in), out, &n, &why) < 0);
        CHECK_STR(why.p, bad[k].why);
    }
    nv_buf_free(&why);
}

static void test_repr(void)
{
    nv_buf b = {0};
    nv_repr_str(&b, "it's", 4);
    CHECK_STR(b.p, "\"it's\"");
    nv_buf_free(&b);
    nv_repr_str(&b, "a'\"\n\x01\x7f\xc3\xa9\xc2\x85\xed\xa0\x80\xff", 14);
    CHECK_STR(b.p, "'a\\'\"\\n\\x01\\x7f\xc3\xa9\\x85\\ud800\\udcff'");
    nv_buf_free(&b);
    nv_repr_bytes(&b, (const unsigned char *)"E\x00'", 3);
    CHECK_STR(b.p, "b\"E\\x00'\"");
    nv_buf_free(&b);
}

static void test_versions(void)
{
    /* Each sorts strictly before the next (semver.org's example, and numbers as numbers). */
    const char *order[] = {"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                           "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0",
                           "2.0.0", "10.0.0", "999999999.0.0"};
    size_t n = sizeof order / sizeof order[0];
    nv_version v[16];
    for (size_t k = 0; k < n; k++) CHECK(nv_version_parse(order[k], strlen(order[k]), &v[k]));
    for (size_t a = 0; a < n; a++)
        for (size_t b = 0; b < n; b++) {
            int c = nv_version_cmp(&v[a], &v[b]);
            CHECK(a < b ? c < 0 : a > b ? c > 0 : c == 0);
        }
    nv_version x, y;
    CHECK(nv_version_parse("2.0.0+a", 7, &x) && nv_version_parse("2.0.0+b", 7, &y) && nv_version_cmp(&x, &y) == 0);
    const char *bad[] = {"01.0.0", "1.0", "1.0.0-", "1.0.0-01", "1.0.0+", "1.0.0-a..b", "1000000000.0.0",
                         "v1.0.0", "1.0.0 ", ""};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) CHECK(!nv_version_parse(bad[k], strlen(bad[k]), &x));
    CHECK(nv_version_parse("1.0.0-0a.-", 10, &x));
}

static void test_times(void)
{
    int64_t ts;
    nv_buf why = {0};
    CHECK(nv_parse_time("1970-01-01T00:00:00Z", 20, &ts, &why) && ts == 0);
    CHECK(nv_parse_time("2024-02-29T23:59:59Z", 20, &ts, &why) && ts == 1709251199);
    CHECK(!nv_parse_time("2023-02-29T00:00:00Z", 20, &ts, &why));
    CHECK_STR(why.p, "'2023-02-29T00:00:00Z' is not a valid calendar time");
    nv_buf_free(&why);
    CHECK(!nv_parse_time("0999-01-01T00:00:00Z", 20, &ts, &why));    /* %Y does not pad: no round trip */
    nv_buf_free(&why);
    CHECK(!nv_parse_time("2024-01-01 00:00:00Z", 20, &ts, &why));
    CHECK_STR(why.p, "'2024-01-01 00:00:00Z' is not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ");
    nv_buf_free(&why);
    nv_buf b = {0};
    nv_format_time(&b, -1);
    CHECK_STR(b.p, "1969-12-31T23:59:59Z");
    nv_buf_free(&b);
}

static void test_signature(void)
{
    nv_pubkey key;
    nv_error err = {0};
    CHECK(nv_pubkey_parse_line(PK, strlen(PK), &key, &err) == 0);
    char hex[17];
    nv_key_id_hex(hex, key.key_id);
    CHECK_STR(hex, "0807060504030201");
    nv_signature sig;
    CHECK(nv_sig_parse((const unsigned char *)SIG, strlen(SIG), "f.minisig", &sig, &err) == 0);
    CHECK(sig.trusted_comment_len == 9 && memcmp(sig.trusted_comment, "unit test", 9) == 0);
    CHECK(nv_sig_verify((const unsigned char *)DATA, strlen(DATA), &sig, &key, 1, "f.minisig", &err) == 0);
    /* One byte of the data changed: the signature over its BLAKE2b-512 fails. */
    CHECK(nv_sig_verify((const unsigned char *)"{\"hello\": 2}\n", 13, &sig, &key, 1, "f.minisig", &err) < 0);
    CHECK(err.cls == NV_BAD_SIGNATURE);
    CHECK_STR(err.reason, "signature by key 0807060504030201 does not match the file's contents");
    CHECK_STR(err.path, "f.minisig");
    /* The trusted comment changed: the global signature fails. */
    char *edited = nv_xstrndup(SIG, strlen(SIG));
    char *tc = strstr(edited, "unit test");
    tc[0] = 'U';
    CHECK(nv_sig_parse((const unsigned char *)edited, strlen(edited), "f.minisig", &sig, &err) == 0);
    CHECK(nv_sig_verify((const unsigned char *)DATA, strlen(DATA), &sig, &key, 1, "f.minisig", &err) < 0);
    CHECK_STR(err.reason, "the trusted comment's signature by key 0807060504030201 is invalid");
    free(edited);
    /* Another key id: not trusted. */
    nv_pubkey other = key;
    other.key_id[0] ^= 1;
    CHECK(nv_sig_parse((const unsigned char *)SIG, strlen(SIG), "f.minisig", &sig, &err) == 0);
    CHECK(nv_sig_verify((const unsigned char *)DATA, strlen(DATA), &sig, &other, 1, "f.minisig", &err) < 0);
    CHECK(err.cls == NV_UNKNOWN_KEY);
    /* Legacy "Ed" is refused before any key is looked at. */
    sig.alg[1] = 'd';
    CHECK(nv_sig_verify((const unsigned char *)DATA, strlen(DATA), &sig, &key, 1, "f.minisig", &err) < 0);
    CHECK(err.cls == NV_LEGACY_SIGNATURE);
    CHECK(nv_sig_parse((const unsigned char *)"a\nb\n", 4, "f.minisig", &sig, &err) < 0);
    CHECK_STR(err.reason, "a minisign signature has 4 lines, this one has 2");
    nv_error_clear(&err);
}

static void test_manifest(void)
{
    static const char good[] =
        "{\"schema\": \"vault-plugin-shim/manifest/v1\", \"name\": \"p\", \"type\": \"auth\", "
        "\"version\": \"1.2.3-rc.1+b\", \"sha256\": \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\", "
        "\"size\": 2147483648, \"os\": \"linux\", \"arch\": \"arm64\", \"issued_at\": \"2026-01-01T00:00:00Z\", "
        "\"expires_at\": null}";
    nv_manifest m;
    nv_error err = {0};
    CHECK(nv_manifest_parse((const unsigned char *)good, strlen(good), "m", &m, &err) == 0);
    CHECK(m.size == 2147483648LL && !m.has_expiry && strcmp(m.version_text, "1.2.3-rc.1+b") == 0);
    nv_manifest_free(&m);
    const struct { const char *in, *reason; } bad[] = {
        {"[]", "manifest must be a JSON object"},
        {"{\"schema\": 1}", "unsupported manifest schema 1 (this shim reads 'vault-plugin-shim/manifest/v1')"},
        {"{\"a\": 1, \"a\": 2}", "manifest is not valid JSON (duplicate key 'a')"},
        {"{\"a\": NaN}", "manifest is not valid JSON (NaN is not allowed in a manifest)"},
        {"{\"a\" 1}", "manifest is not valid JSON (Expecting ':' delimiter: line 1 column 6 (char 5))"},
        {"{\n\"\xc3\xa9\": \"\\x\"}", "manifest is not valid JSON (Invalid \\escape: line 2 column 7 (char 8))"},
        {"{\"schema\": \"vault-plugin-shim/manifest/v1\", \"b\": 1, \"a\": 2}",
         "unknown manifest field(s) 'a', 'b'"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK(nv_manifest_parse((const unsigned char *)bad[k].in, strlen(bad[k].in), "m", &m, &err) < 0);
        CHECK(err.cls == NV_MANIFEST);
        CHECK_STR(err.reason, bad[k].reason);
    }
    nv_error_clear(&err);
}

static void test_policy(void)
{
    nv_buf b = {0};
    nv_buf_printf(&b, NV_POLICY_MAGIC "\nname=p\ntype=secret\nplugins_dir=versions/p\nmin_version=1.0.0\n"
                      "max_size=100\non_refused_newer=refuse\nmode=exec\nkey=%s\nend\n", PK);
    nv_policy p;
    nv_error err = {0};
    CHECK(nv_policy_parse((const unsigned char *)b.p, b.n, &p, &err) == 0);
    CHECK(p.nkeys == 1 && p.max_size == 100 && strcmp(p.plugins_dir, "versions/p") == 0);
    CHECK(p.refuse_newer == 1 && p.proxy == 0);
    nv_policy_free(&p);
    /* Any damage is refused: every prefix, and a byte changed at each position. */
    for (size_t cut = 0; cut < b.n; cut++) {
        CHECK(nv_policy_parse((const unsigned char *)b.p, cut, &p, &err) < 0);
        CHECK(err.cls == NV_POLICY);
    }
    const char *evil[] = {"plugins_dir=../x", "type=other", "max_size=0", "min_version=1.0",
                          "on_refused_newer=Refuse", "mode=exec "};
    for (size_t k = 0; k < sizeof evil / sizeof evil[0]; k++) {
        nv_buf e = {0};
        const char *key_end = strchr(evil[k], '=');
        char key[32];
        snprintf(key, sizeof key, "\n%.*s=", (int)(key_end - evil[k]), evil[k]);
        const char *at = strstr(b.p, key);
        const char *eol = strchr(at + 1, '\n');
        nv_buf_put(&e, b.p, (size_t)(at - b.p) + 1);
        nv_buf_puts(&e, evil[k]);
        nv_buf_puts(&e, eol);
        CHECK(nv_policy_parse((const unsigned char *)e.p, e.n, &p, &err) < 0);
        nv_buf_free(&e);
    }
    nv_error_clear(&err);
    nv_buf_free(&b);
}

int main(void)
{
    if (sodium_init() < 0) return 2;
    test_base64();
    test_repr();
    test_versions();
    test_times();
    test_signature();
    test_manifest();
    test_policy();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
