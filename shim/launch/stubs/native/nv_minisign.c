/* minisign signatures and keys (shim/trust/minisign.py): parse strictly, verify with libsodium. */
#include "nv.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char UNTRUSTED[] = "untrusted comment: ";
static const char TRUSTED[] = "trusted comment: ";

/* ---- base64: binascii.a2b_base64(s, strict_mode=True) of CPython 3.11 ---------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* The text is a Python str first: str.encode("ascii") fails on anything above 0x7F with
 * UnicodeEncodeError, whose message names the code point(s) and their position. */
static int ascii_or_why(const char *s, size_t n, nv_buf *why)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, pos = 0;
    while (i < n && u[i] < 0x80) { i++; pos++; }
    if (i == n) return 1;
    /* The run of non-ASCII code points that starts here (the text is valid UTF-8). */
    size_t start = pos, j = i, count = 0;
    uint32_t first = 0;
    while (j < n && u[j] >= 0x80) {
        size_t k = nv_utf8_len(u + j, n - j);
        if (k == 0) k = 1;
        if (count == 0) {
            first = k == 2 ? u[j] & 0x1Fu : k == 3 ? u[j] & 0x0Fu : k == 4 ? u[j] & 0x07u : u[j];
            for (size_t c = 1; c < k; c++) first = (first << 6) | (u[j + c] & 0x3Fu);
        }
        j += k;
        count++;
    }
    if (count == 1) {   /* the character as UnicodeEncodeError writes it: \xNN, \uNNNN or \UNNNNNNNN */
        nv_buf_puts(why, "'ascii' codec can't encode character '");
        if (first <= 0xFF) nv_buf_printf(why, "\\x%02x", (unsigned)first);
        else if (first <= 0xFFFF) nv_buf_printf(why, "\\u%04x", (unsigned)first);
        else nv_buf_printf(why, "\\U%08x", (unsigned)first);
        nv_buf_printf(why, "' in position %zu: ordinal not in range(128)", start);
    } else {
        nv_buf_printf(why, "'ascii' codec can't encode characters in position %zu-%zu: ordinal not in range(128)",
                      start, start + count - 1);
    }
    return 0;
}

int nv_b64decode(const char *s, size_t n, unsigned char *out, size_t *out_len, nv_buf *why)
{
    if (!ascii_or_why(s, n, why)) return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, pads = 0;
    int quad = 0, padding = 0;
    unsigned left = 0;
    for (size_t i = 0; i < n; i++) {
        if (u[i] == '=') {
            padding = 1;
            if (i == 0) {
                nv_buf_puts(why, "Leading padding not allowed");
                return -1;
            }
            /* 3.11: '=' after a complete quad is skipped; in a quad, enough of them end it. */
            if (quad >= 2 && (size_t)quad + ++pads >= 4) {
                if (i + 1 < n) {
                    nv_buf_puts(why, "Excess data after padding");
                    return -1;
                }
                *out_len = o;
                return 0;
            }
            continue;
        }
        int v = b64_value(u[i]);
        if (v < 0) {
            nv_buf_puts(why, "Only base64 data is allowed");
            return -1;
        }
        if (padding) {
            nv_buf_puts(why, "Discontinuous padding not allowed");
            return -1;
        }
        pads = 0;
        switch (quad) {
        case 0: quad = 1; left = (unsigned)v; break;
        case 1:
            quad = 2;
            out[o++] = (unsigned char)((left << 2) | ((unsigned)v >> 4));
            left = (unsigned)v & 0x0F;
            break;
        case 2:
            quad = 3;
            out[o++] = (unsigned char)((left << 4) | ((unsigned)v >> 2));
            left = (unsigned)v & 0x03;
            break;
        default: quad = 0; out[o++] = (unsigned char)((left << 6) | (unsigned)v); left = 0; break;
        }
    }
    if (quad == 1) {
        nv_buf_printf(why, "Invalid base64-encoded string: number of data characters (%zu) cannot be 1 "
                           "more than a multiple of 4", o / 3 * 4 + 1);
        return -1;
    }
    if (quad != 0) {
        nv_buf_puts(why, "Incorrect padding");
        return -1;
    }
    *out_len = o;
    return 0;
}

void nv_key_id_hex(char out[17], const unsigned char key_id[NV_KEY_ID_LEN])
{
    static const char hex[] = "0123456789ABCDEF";
    for (int i = 0; i < NV_KEY_ID_LEN; i++) {   /* the little-endian uint64, as minisign prints it */
        out[2 * i] = hex[key_id[NV_KEY_ID_LEN - 1 - i] >> 4];
        out[2 * i + 1] = hex[key_id[NV_KEY_ID_LEN - 1 - i] & 15];
    }
    out[16] = 0;
}

/* ---- signature files ------------------------------------------------------------------------ */

typedef struct {
    const char *p;
    size_t n;
} span;

/* _check_comment: the prefix, at most limit bytes after it, no control character but tab. */
static int check_comment(span line, const char *prefix, size_t limit, const char *what,
                         const char *path, span *body, nv_error *err)
{
    size_t plen = strlen(prefix);
    if (line.n < plen || memcmp(line.p, prefix, plen) != 0) {
        nv_buf b = {0};
        nv_buf_printf(&b, "%s must start with ", what);
        nv_repr_str(&b, prefix, plen - 1);      /* prefix.strip(): without the trailing space */
        nv_fail_buf(err, NV_SIGNATURE_FORMAT, path, NULL, &b);
        return -1;
    }
    body->p = line.p + plen;
    body->n = line.n - plen;
    if (body->n > limit) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL, "%s is longer than %zu bytes", what, limit);
        return -1;
    }
    for (size_t i = 0; i < body->n; i++) {
        unsigned char c = (unsigned char)body->p[i];
        if (c < 0x20 && c != '\t') {
            nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL, "%s contains control characters", what);
            return -1;
        }
    }
    return 0;
}

static int decode_line(span line, const char *what, const char *path, unsigned char *out,
                       size_t *out_len, nv_error *err)
{
    nv_buf why = {0};
    if (nv_b64decode(line.p, line.n, out, out_len, &why) == 0) {
        nv_buf_free(&why);
        return 0;
    }
    nv_buf b = {0};
    nv_buf_printf(&b, "%s is not valid base64 (%s)", what, why.p);
    nv_buf_free(&why);
    nv_fail_buf(err, NV_SIGNATURE_FORMAT, path, NULL, &b);
    return -1;
}

int nv_sig_parse(const unsigned char *data, size_t n, const char *path, nv_signature *sig,
                 nv_error *err)
{
    memset(sig, 0, sizeof *sig);
    if (n > NV_SIGNATURE_MAX) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL,
                "signature file is %zu bytes, more than the %d-byte limit", n, NV_SIGNATURE_MAX);
        return -1;
    }
    if (!nv_utf8_valid(data, n)) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL, "signature file is not UTF-8 text");
        return -1;
    }
    /* text.split("\n"), the last empty piece dropped, one trailing "\r" off each line. */
    span lines[5];
    size_t count = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || data[i] == '\n') {
            if (i == n && start == n && count > 0 && data[n - 1] == '\n') break;
            if (i == n && n == 0) break;    /* "".split("\n") == [""], popped */
            if (count < 5) {
                lines[count].p = (const char *)data + start;
                lines[count].n = i - start;
                if (lines[count].n && lines[count].p[lines[count].n - 1] == '\r') lines[count].n--;
            }
            count++;
            start = i + 1;
        }
    }
    if (count != 4) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL,
                "a minisign signature has 4 lines, this one has %zu", count);
        return -1;
    }
    span body;
    if (check_comment(lines[0], UNTRUSTED, NV_COMMENT_MAX, "line 1", path, &body, err) < 0)
        return -1;
    unsigned char blob[NV_SIGNATURE_MAX];
    size_t blob_len;
    if (decode_line(lines[1], "the signature line", path, blob, &blob_len, err) < 0) return -1;
    if (blob_len != 74) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL, "the signature decodes to %zu bytes, expected 74",
                blob_len);
        return -1;
    }
    span trusted;
    if (check_comment(lines[2], TRUSTED, NV_TRUSTED_COMMENT_MAX, "line 3", path, &trusted, err) < 0)
        return -1;
    unsigned char global[NV_SIGNATURE_MAX];
    size_t global_len;
    if (decode_line(lines[3], "the global signature", path, global, &global_len, err) < 0) return -1;
    if (global_len != 64) {
        nv_fail(err, NV_SIGNATURE_FORMAT, path, NULL,
                "the global signature decodes to %zu bytes, expected 64", global_len);
        return -1;
    }
    if (!(blob[0] == 'E' && (blob[1] == 'D' || blob[1] == 'd'))) {
        nv_buf b = {0};
        nv_buf_puts(&b, "unsupported signature algorithm ");
        nv_repr_bytes(&b, blob, 2);
        nv_fail_buf(err, NV_SIGNATURE_FORMAT, path, NULL, &b);
        return -1;
    }
    memcpy(sig->alg, blob, 2);
    memcpy(sig->key_id, blob + 2, NV_KEY_ID_LEN);
    memcpy(sig->sig, blob + 10, 64);
    memcpy(sig->global_sig, global, 64);
    sig->trusted_comment = trusted.p;
    sig->trusted_comment_len = trusted.n;
    return 0;
}

int nv_pubkey_parse_line(const char *line, size_t n, nv_pubkey *key, nv_error *err)
{
    unsigned char blob[1024];   /* n <= 1024 base64 characters decode to at most 768 bytes */
    size_t len;
    nv_buf why = {0};
    if (n > 1024 || nv_b64decode(line, n, blob, &len, &why) < 0) {
        nv_fail(err, NV_KEY_FORMAT, NULL, NULL, "the public key is not valid base64 (%s)",
                why.p ? why.p : "too long");
        nv_buf_free(&why);
        return -1;
    }
    if (len != 42) {
        nv_fail(err, NV_KEY_FORMAT, NULL, NULL, "the public key decodes to %zu bytes, expected 42", len);
        return -1;
    }
    if (blob[0] != 'E' || blob[1] != 'd') {
        nv_buf b = {0};
        nv_buf_puts(&b, "unsupported public key algorithm ");
        nv_repr_bytes(&b, blob, 2);
        nv_fail_buf(err, NV_KEY_FORMAT, NULL, NULL, &b);
        return -1;
    }
    memcpy(key->key_id, blob + 2, NV_KEY_ID_LEN);
    memcpy(key->pk, blob + 10, 32);
    return 0;
}

/* ---- verification ----------------------------------------------------------------------------- */

int nv_sig_verify(const unsigned char *data, size_t n, const nv_signature *sig,
                  const nv_pubkey *keys, size_t nkeys, const char *path, nv_error *err)
{
    char hex[17];
    if (sig->alg[1] == 'd') {   /* "Ed": Ed25519 over the raw file, what old minisign wrote */
        nv_fail(err, NV_LEGACY_SIGNATURE, path, NULL, "legacy non-prehashed `Ed` signature refused");
        return -1;
    }
    size_t k;
    for (k = 0; k < nkeys; k++)
        if (memcmp(keys[k].key_id, sig->key_id, NV_KEY_ID_LEN) == 0) break;
    if (k == nkeys) {
        nv_key_id_hex(hex, sig->key_id);
        nv_fail(err, NV_UNKNOWN_KEY, path, NULL, "signed by key %s, which is not trusted", hex);
        return -1;
    }
    nv_key_id_hex(hex, keys[k].key_id);
    unsigned char prehash[crypto_generichash_BYTES_MAX];    /* BLAKE2b-512 */
    crypto_generichash(prehash, sizeof prehash, data, n, NULL, 0);
    if (crypto_sign_verify_detached(sig->sig, prehash, sizeof prehash, keys[k].pk) != 0) {
        nv_fail(err, NV_BAD_SIGNATURE, path, NULL,
                "signature by key %s does not match the file's contents", hex);
        return -1;
    }
    /* The global signature binds the trusted comment to this signature. */
    unsigned char global_msg[64 + NV_TRUSTED_COMMENT_MAX];
    memcpy(global_msg, sig->sig, 64);
    memcpy(global_msg + 64, sig->trusted_comment, sig->trusted_comment_len);
    if (crypto_sign_verify_detached(sig->global_sig, global_msg, 64 + sig->trusted_comment_len,
                                    keys[k].pk) != 0) {
        nv_fail(err, NV_BAD_SIGNATURE, path, NULL,
                "the trusted comment's signature by key %s is invalid", hex);
        return -1;
    }
    return (int)k;
}
