/*
 * nv-explain: the native decision as data, for tests and the differential test against
 * shim.trust (tests/native/test_native_differential.py). Not part of a launcher.
 *
 *   nv-explain select NOW UID POLICY_FILE...  for each policy, every candidate's verdict,
 *                                           exhaustively (like shim.trust.verify.report): one
 *                                           line per policy, a JSON array (each with
 *                                           passed_over), and when a version is chosen a last
 *                                           {"launch":...}: the on_refused_newer refusal or
 *                                           the expiry warning a launch at NOW gives
 *   nv-explain manifest FILE...             Manifest.parse of each file's bytes, a line each
 *   nv-explain signature FILE...            Signature.parse of each file's bytes, a line each
 *
 * Strings are written so that Python's json.loads gives what Python itself would hold:
 * bytes that are not UTF-8 as U+DC80+byte (surrogateescape), encoded lone surrogates as
 * \uD8xx escapes (nv_json_str).
 */
#include "nv.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void json_str(nv_buf *b, const char *str) { nv_json_str(b, str); }

static void put_error(nv_buf *b, const nv_error *e)
{
    nv_buf_puts(b, "\"error\":");
    if (e->cls == NV_OK) { nv_buf_puts(b, "null"); return; }
    json_str(b, nv_class_name(e->cls));
    nv_buf_puts(b, ",\"reason\":");
    json_str(b, e->reason);
    nv_buf_puts(b, ",\"file\":");
    if (e->path) json_str(b, e->path);
    else nv_buf_puts(b, "null");
    nv_buf_puts(b, ",\"fix\":");
    json_str(b, nv_error_fix(e));
}

static void emit(nv_buf *b)
{
    nv_buf_putc(b, '\n');
    fwrite(b->p, 1, b->n, stdout);
    nv_buf_free(b);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    size_t cap = 1 << 16, len = 0;
    unsigned char *p = nv_xmalloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            p = realloc(p, cap);
            if (!p) nv_oom();
        }
        size_t r = fread(p + len, 1, cap - len, f);
        if (r == 0) break;
        len += r;
    }
    fclose(f);
    *n = len;
    return p;
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

/* One line per policy: a JSON array of the candidates' verdicts, or of the one fatal error. */
static void select_one(const char *policy_path, int64_t now, unsigned uid)
{
    size_t n;
    unsigned char *data = slurp(policy_path, &n);
    nv_policy policy;
    nv_error err = {0};
    nv_buf b = {0};
    nv_buf_putc(&b, '[');
    if (nv_policy_parse(data, n, &policy, &err) < 0) {
        free(data);
        nv_buf_puts(&b, "{\"fatal\":true,");
        put_error(&b, &err);
        nv_buf_puts(&b, "}]");
        nv_error_clear(&err);
        emit(&b);
        return;
    }
    free(data);
    char goos[65], goarch[65];
    nv_host_platform(goos, goarch);
    nv_selection s;
    memset(&s, 0, sizeof s);
    s.policy = &policy;
    s.plugins_dir = policy.plugins_dir;
    s.now = now;
    s.uid = uid;
    s.goos = goos;
    s.goarch = goarch;
    s.dir_fd = -1;
    if (nv_select(&s, hash_only, NULL, 1) < 0) {
        nv_buf_puts(&b, "{\"fatal\":true,");
        put_error(&b, &s.fatal);
        nv_buf_putc(&b, '}');
    }
    size_t *over = nv_xmalloc((s.ncands ? s.ncands : 1) * sizeof *over);
    size_t nover = nv_passed_over(&s, over), j = 0;
    for (size_t k = 0; k < s.ncands; k++) {
        const nv_candidate *c = &s.cands[k];
        nv_buf_puts(&b, k ? ",{\"binary\":" : "{\"binary\":");
        json_str(&b, c->binary);
        nv_buf_puts(&b, ",\"chosen\":");
        nv_buf_puts(&b, s.chosen == (long)k ? "true" : "false");
        nv_buf_puts(&b, ",\"passed_over\":");
        int passed = j < nover && over[j] == k;     /* over is in name order too */
        j += passed;
        nv_buf_puts(&b, passed ? "true" : "false");
        nv_buf_puts(&b, ",\"version\":");
        if (c->has_manifest) json_str(&b, c->manifest.version_text);
        else nv_buf_puts(&b, "null");
        nv_buf_putc(&b, ',');
        put_error(&b, &c->error);
        nv_buf_putc(&b, '}');
    }
    free(over);
    if (s.chosen >= 0) {    /* sealed.no_quiet_fallback on this selection: its refusal, or its warning */
        nv_error refused = {0};
        nv_buf warning = {0};
        double days;
        nv_buf_puts(&b, ",{\"launch\":true,\"refusal\":");
        if (nv_newer_refused(&s, &refused)) {
            nv_buf_putc(&b, '{');
            put_error(&b, &refused);
            nv_buf_puts(&b, "},\"warning\":null}");
        } else if (nv_expiry_warning(&s, (double)now, &warning, &days)) {
            nv_buf_puts(&b, "null,\"warning\":{\"message\":");
            json_str(&b, warning.p);
            nv_buf_puts(&b, ",\"plugin\":");
            json_str(&b, policy.name);
            nv_buf_puts(&b, ",\"file\":");
            json_str(&b, s.cands[s.chosen].path);
            nv_buf_puts(&b, ",\"fix\":\"" NV_FIX_RESIGN "\"}}");
        } else {
            nv_buf_puts(&b, "null,\"warning\":null}");
        }
        nv_error_clear(&refused);
        nv_buf_free(&warning);
    }
    nv_buf_putc(&b, ']');
    emit(&b);
    nv_selection_free(&s);
    nv_policy_free(&policy);
}

static int cmd_manifest(const char *path)
{
    size_t n;
    unsigned char *data = slurp(path, &n);
    nv_manifest m;
    nv_error err = {0};
    nv_buf b = {0};
    nv_buf_putc(&b, '{');
    if (nv_manifest_parse(data, n, "M", &m, &err) == 0) {
        nv_buf_puts(&b, "\"error\":null,\"name\":");
        json_str(&b, m.name);
        nv_buf_puts(&b, ",\"version\":");
        json_str(&b, m.version_text);
        nv_buf_printf(&b, ",\"size\":%lld,\"issued_at\":%lld,\"expires_at\":", (long long)m.size,
                      (long long)m.issued_at);
        if (m.has_expiry) nv_buf_printf(&b, "%lld", (long long)m.expires_at);
        else nv_buf_puts(&b, "null");
        nv_manifest_free(&m);
    } else {
        put_error(&b, &err);
        nv_error_clear(&err);
    }
    nv_buf_putc(&b, '}');
    emit(&b);
    free(data);
    return 0;
}

static int cmd_signature(const char *path)
{
    size_t n;
    unsigned char *data = slurp(path, &n);
    nv_signature sig;
    nv_error err = {0};
    nv_buf b = {0};
    nv_buf_putc(&b, '{');
    if (nv_sig_parse(data, n, "S", &sig, &err) == 0) {
        char hex[17];
        nv_key_id_hex(hex, sig.key_id);
        nv_buf_printf(&b, "\"error\":null,\"algorithm\":\"%c%c\",\"key_id\":\"%s\"", sig.alg[0], sig.alg[1], hex);
    } else {
        put_error(&b, &err);
        nv_error_clear(&err);
    }
    nv_buf_putc(&b, '}');
    emit(&b);
    free(data);
    return 0;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0) return 3;
    if (argc >= 5 && strcmp(argv[1], "select") == 0) {
        int64_t now = strtoll(argv[2], NULL, 10);
        unsigned uid = (unsigned)strtoul(argv[3], NULL, 10);
        for (int k = 4; k < argc; k++) select_one(argv[k], now, uid);
        return 0;
    }
    if (argc >= 3 && (strcmp(argv[1], "manifest") == 0 || strcmp(argv[1], "signature") == 0)) {
        for (int k = 2; k < argc; k++)     /* many files per run: the differential test is fast */
            (argv[1][0] == 'm' ? cmd_manifest : cmd_signature)(argv[k]);
        return 0;
    }
    fprintf(stderr, "usage: nv-explain select NOW UID POLICY... | manifest FILE... | signature FILE...\n");
    return 2;
}
