/*
 * The signed release manifest (shim/trust/manifest.py): strict JSON, then strict fields.
 *
 * The JSON reader decides exactly what Python's json.loads (3.11, its C scanner, strict)
 * decides for the same bytes, with the manifest's hooks: duplicate keys (in any object,
 * checked when the object closes, as object_pairs_hook does) and NaN/Infinity refused. Its
 * error texts are Python's, with the same "line L column C (char P)" positions, counted in
 * code points. One knowingly different limit: nesting deeper than NV_JSON_DEPTH_MAX is
 * refused here, where Python's limit is its recursion depth (about 1000, less the caller's
 * frames); both refuse the manifest as invalid JSON.
 */
#include "nv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char SCHEMA[] = "vault-plugin-shim/manifest/v1";

/* ---- JSON ------------------------------------------------------------------------------------ */

typedef enum { JV_STR, JV_INT, JV_FLOAT, JV_BOOL, JV_NULL, JV_LIST, JV_DICT } jv_kind;

static const char *const KIND_NAMES[] = {"str", "int", "float", "bool", "NoneType", "list", "dict"};

typedef struct {
    char *key;              /* WTF-8 */
    size_t key_len;
    jv_kind kind;
    char *text;             /* str: the value (WTF-8); int/float: the literal; else NULL */
    size_t text_len;
    int truth;              /* bool */
    char *repr;             /* Python's repr() of the value (top level only) */
} jv_pair;

typedef struct {
    const unsigned char *s;
    size_t n, i;
    nv_buf *why;            /* the error text, once */
    int failed;
} jp;

static void ws(jp *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

/* JSONDecodeError's text: msg, then where, in code points of the (valid UTF-8) document. */
static void fail_at(jp *p, const char *msg, size_t at)
{
    if (p->failed) return;
    p->failed = 1;
    size_t pos = 0, line = 1, last_nl = 0;
    int seen_nl = 0;
    for (size_t k = 0; k < at && k < p->n; k++) {
        if ((p->s[k] & 0xC0) == 0x80) continue;     /* continuation byte */
        if (p->s[k] == '\n') { line++; last_nl = pos; seen_nl = 1; }
        pos++;
    }
    size_t col = seen_nl ? pos - last_nl : pos + 1;
    nv_buf_printf(p->why, "%s: line %zu column %zu (char %zu)", msg, line, col, pos);
}

static void fail_plain(jp *p, nv_buf *text)
{
    if (!p->failed) {
        p->failed = 1;
        nv_buf_put(p->why, text->p, text->n);
    }
    nv_buf_free(text);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Code points from byte offset a to the end: the scanner's "len - end". */
static size_t cps_left(const jp *p, size_t a)
{
    size_t c = 0;
    for (size_t k = a; k < p->n; k++)
        if ((p->s[k] & 0xC0) != 0x80) c++;
    return c;
}

static void put_cp(nv_buf *b, uint32_t c)
{
    unsigned char u[4];
    size_t k;
    if (c < 0x80) { u[0] = (unsigned char)c; k = 1; }
    else if (c < 0x800) { u[0] = (unsigned char)(0xC0 | (c >> 6)); u[1] = (unsigned char)(0x80 | (c & 0x3F)); k = 2; }
    else if (c < 0x10000) {     /* lone surrogates too (WTF-8) */
        u[0] = (unsigned char)(0xE0 | (c >> 12)); u[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (c & 0x3F)); k = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | (c >> 18)); u[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); u[3] = (unsigned char)(0x80 | (c & 0x3F)); k = 4;
    }
    nv_buf_put(b, u, k);
}

/* scanstring: p->i is just after the opening quote. */
static int scan_string(jp *p, nv_buf *out)
{
    size_t begin = p->i;
    for (;;) {
        size_t k = p->i;
        while (k < p->n && p->s[k] != '"' && p->s[k] != '\\') {
            if (p->s[k] <= 0x1F) { fail_at(p, "Invalid control character at", k); return -1; }
            k++;
        }
        if (k >= p->n) { fail_at(p, "Unterminated string starting at", begin - 1); return -1; }
        nv_buf_put(out, p->s + p->i, k - p->i);
        if (p->s[k] == '"') { p->i = k + 1; return 0; }
        size_t b = k;           /* the backslash */
        if (b + 1 >= p->n) { fail_at(p, "Unterminated string starting at", begin - 1); return -1; }
        unsigned char c = p->s[b + 1];
        if (c != 'u') {
            char e;
            switch (c) {
            case '"': e = '"'; break;
            case '\\': e = '\\'; break;
            case '/': e = '/'; break;
            case 'b': e = '\b'; break;
            case 'f': e = '\f'; break;
            case 'n': e = '\n'; break;
            case 'r': e = '\r'; break;
            case 't': e = '\t'; break;
            default: fail_at(p, "Invalid \\escape", b); return -1;
            }
            nv_buf_putc(out, e);
            p->i = b + 2;
            continue;
        }
        /* \uXXXX: 4 hex digits and at least one more character after them. */
        if (cps_left(p, b + 2) <= 4) { fail_at(p, "Invalid \\uXXXX escape", b + 1); return -1; }
        uint32_t cp = 0;
        for (size_t h = b + 2; h < b + 6; h++) {
            int v = hexval(p->s[h]);
            if (v < 0) { fail_at(p, "Invalid \\uXXXX escape", b + 1); return -1; }
            cp = (cp << 4) | (uint32_t)v;
        }
        size_t end = b + 6;
        /* A high surrogate pairs with a following \uXXXX low surrogate, if 7 or more code
         * points remain (the scanner's "end + 6 < len"). */
        if (cp >= 0xD800 && cp <= 0xDBFF && cps_left(p, end) > 6 && p->s[end] == '\\' &&
            p->s[end + 1] == 'u') {
            uint32_t c2 = 0;
            for (size_t h = end + 2; h < end + 6; h++) {
                int v = hexval(p->s[h]);
                if (v < 0) { fail_at(p, "Invalid \\uXXXX escape", end + 1); return -1; }
                c2 = (c2 << 4) | (uint32_t)v;
            }
            if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (c2 - 0xDC00);
                end += 6;
            }
        }
        put_cp(out, cp);
        p->i = end;
    }
}

/* Python's repr() of a float given as a JSON number literal. */
static void repr_float(nv_buf *b, const char *lit, size_t n)
{
    char tmp[64], *copy = nv_xstrndup(lit, n);
    double v = strtod(copy, NULL);
    free(copy);
    if (v != v) { nv_buf_puts(b, "nan"); return; }
    if (v > 1.7976931348623157e308) { nv_buf_puts(b, "inf"); return; }
    if (v < -1.7976931348623157e308) { nv_buf_puts(b, "-inf"); return; }
    int prec;
    for (prec = 1; prec <= 17; prec++) {   /* the shortest digits that read back the same */
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v) break;
    }
    /* tmp is [-]D[.DDD]e[+-]XX */
    char digits[32];
    size_t nd = 0;
    const char *q = tmp;
    int neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int decpt = exp10 + 1;
    if (neg) nv_buf_putc(b, '-');
    if (decpt > 16 || decpt < -3) {
        nv_buf_putc(b, digits[0]);
        if (nd > 1) { nv_buf_putc(b, '.'); nv_buf_put(b, digits + 1, nd - 1); }
        nv_buf_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        nv_buf_puts(b, "0.");
        for (int z = 0; z < -decpt; z++) nv_buf_putc(b, '0');
        nv_buf_put(b, digits, nd);
    } else {
        for (int k = 0; k < decpt; k++) nv_buf_putc(b, (size_t)k < nd ? digits[k] : '0');
        nv_buf_putc(b, '.');
        if ((size_t)decpt < nd) nv_buf_put(b, digits + decpt, nd - (size_t)decpt);
        else nv_buf_putc(b, '0');
    }
}

static void free_pairs(jv_pair *pairs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(pairs[k].key);
        free(pairs[k].text);
        free(pairs[k].repr);
    }
    free(pairs);
}

/* The first key (in order) that an earlier pair already had: what the hook raises on. */
static int check_duplicates(jp *p, jv_pair *pairs, size_t n)
{
    for (size_t k = 1; k < n; k++)
        for (size_t j = 0; j < k; j++)
            if (pairs[j].key_len == pairs[k].key_len &&
                memcmp(pairs[j].key, pairs[k].key, pairs[k].key_len) == 0) {
                nv_buf t = {0};
                nv_buf_puts(&t, "duplicate key ");
                nv_repr_str(&t, pairs[k].key, pairs[k].key_len);
                fail_plain(p, &t);
                return -1;
            }
    return 0;
}

static int parse_value(jp *p, int depth, jv_pair *v, nv_buf *repr, jv_pair **top, size_t *ntop);

/* '{' seen at p->i - 1. For the top level (top != NULL) the pairs are kept. */
static int parse_object(jp *p, int depth, nv_buf *repr, jv_pair **top, size_t *ntop)
{
    jv_pair *pairs = NULL;
    size_t n = 0, cap = 0;
    if (repr) nv_buf_putc(repr, '{');
    ws(p);
    if (!(p->i < p->n && p->s[p->i] == '}')) {
        for (;;) {
            if (p->i >= p->n || p->s[p->i] != '"') {
                fail_at(p, "Expecting property name enclosed in double quotes", p->i);
                goto bail;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                jv_pair *np = realloc(pairs, cap * sizeof *pairs);
                if (!np) nv_oom();
                pairs = np;
            }
            memset(&pairs[n], 0, sizeof pairs[n]);
            nv_buf key = {0};
            p->i++;
            if (scan_string(p, &key) < 0) { nv_buf_free(&key); goto bail; }
            pairs[n].key_len = key.n;
            pairs[n].key = nv_buf_take(&key);
            n++;
            if (repr) {
                if (n > 1) nv_buf_puts(repr, ", ");
                nv_repr_str(repr, pairs[n - 1].key, pairs[n - 1].key_len);
                nv_buf_puts(repr, ": ");
            }
            ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') { fail_at(p, "Expecting ':' delimiter", p->i); goto bail; }
            p->i++;
            ws(p);
            nv_buf vrepr = {0};
            int want = top != NULL || repr != NULL;
            if (parse_value(p, depth + 1, &pairs[n - 1], want ? &vrepr : NULL, NULL, NULL) < 0) {
                nv_buf_free(&vrepr);
                goto bail;
            }
            if (repr) nv_buf_put(repr, vrepr.p, vrepr.n);
            if (top) pairs[n - 1].repr = nv_buf_take(&vrepr);
            else nv_buf_free(&vrepr);
            ws(p);
            if (p->i < p->n && p->s[p->i] == '}') break;
            if (p->i >= p->n || p->s[p->i] != ',') { fail_at(p, "Expecting ',' delimiter", p->i); goto bail; }
            p->i++;
            ws(p);
        }
    }
    p->i++;
    if (repr) nv_buf_putc(repr, '}');
    if (check_duplicates(p, pairs, n) < 0) goto bail;
    if (top) { *top = pairs; *ntop = n; }
    else free_pairs(pairs, n);
    return 0;
bail:
    free_pairs(pairs, n);
    return -1;
}

static int parse_array(jp *p, int depth, nv_buf *repr)
{
    size_t count = 0;
    if (repr) nv_buf_putc(repr, '[');
    ws(p);
    if (!(p->i < p->n && p->s[p->i] == ']')) {
        for (;;) {
            jv_pair item;
            memset(&item, 0, sizeof item);
            if (repr && count++) nv_buf_puts(repr, ", ");
            int r = parse_value(p, depth + 1, &item, repr, NULL, NULL);
            free(item.text);
            if (r < 0) return -1;
            ws(p);
            if (p->i < p->n && p->s[p->i] == ']') break;
            if (p->i >= p->n || p->s[p->i] != ',') { fail_at(p, "Expecting ',' delimiter", p->i); return -1; }
            p->i++;
            ws(p);
        }
    }
    p->i++;
    if (repr) nv_buf_putc(repr, ']');
    return 0;
}

static int match(const jp *p, const char *word)
{
    size_t n = strlen(word);
    return p->n - p->i >= n && memcmp(p->s + p->i, word, n) == 0;
}

/* The number at p->i (_match_number), or 0 if there is none (then "Expecting value"). */
static int scan_number(jp *p, jv_pair *v, nv_buf *repr)
{
    size_t start = p->i, k = p->i, end_idx = p->n - 1;
    int is_float = 0;
    if (p->s[k] == '-') {
        k++;
        if (k > end_idx) return 0;
    }
    if (p->s[k] >= '1' && p->s[k] <= '9') {
        k++;
        while (k <= end_idx && p->s[k] >= '0' && p->s[k] <= '9') k++;
    } else if (p->s[k] == '0') {
        k++;
    } else {
        return 0;
    }
    size_t int_end = k;
    if (k < end_idx && p->s[k] == '.' && p->s[k + 1] >= '0' && p->s[k + 1] <= '9') {
        is_float = 1;
        k += 2;
        while (k <= end_idx && p->s[k] >= '0' && p->s[k] <= '9') k++;
    }
    if (k < end_idx && (p->s[k] == 'e' || p->s[k] == 'E')) {
        size_t e_start = k;
        k++;
        if (k < end_idx && (p->s[k] == '-' || p->s[k] == '+')) k++;
        while (k <= end_idx && p->s[k] >= '0' && p->s[k] <= '9') k++;
        if (p->s[k - 1] >= '0' && p->s[k - 1] <= '9') is_float = 1;
        else k = e_start;
    }
    (void)int_end;
    p->i = k;
    const char *lit = (const char *)p->s + start;
    size_t len = k - start;
    if (!is_float) {
        size_t digits = len - (lit[0] == '-');
        if (digits > NV_INT_DIGITS_MAX) {
            nv_buf t = {0};
            nv_buf_printf(&t, "Exceeds the limit (%d digits) for integer string conversion: value has "
                              "%zu digits; use sys.set_int_max_str_digits() to increase the limit",
                          NV_INT_DIGITS_MAX, digits);
            fail_plain(p, &t);
            return -1;
        }
        v->kind = JV_INT;
        if (len == 2 && lit[0] == '-' && lit[1] == '0') { lit++; len--; }   /* int("-0") == 0 */
    } else {
        v->kind = JV_FLOAT;
    }
    v->text = nv_xstrndup(lit, len);
    v->text_len = len;
    if (repr) {
        if (v->kind == JV_INT) nv_buf_put(repr, lit, len);
        else repr_float(repr, lit, len);
    }
    return 1;
}

static void constant_refused(jp *p, const char *name)
{
    nv_buf t = {0};
    nv_buf_printf(&t, "%s is not allowed in a manifest", name);
    fail_plain(p, &t);
}

/* scan_once at p->i. */
static int parse_value(jp *p, int depth, jv_pair *v, nv_buf *repr, jv_pair **top, size_t *ntop)
{
    if (p->i >= p->n) { fail_at(p, "Expecting value", p->i); return -1; }
    unsigned char c = p->s[p->i];
    switch (c) {
    case '"': {
        nv_buf s = {0};
        p->i++;
        if (scan_string(p, &s) < 0) { nv_buf_free(&s); return -1; }
        v->kind = JV_STR;
        v->text_len = s.n;
        v->text = nv_buf_take(&s);
        if (repr) nv_repr_str(repr, v->text, v->text_len);
        return 0;
    }
    case '{':
    case '[':
        if (depth >= NV_JSON_DEPTH_MAX) {
            nv_buf t = {0};
            nv_buf_printf(&t, "maximum recursion depth exceeded while decoding a JSON %s from a unicode string",
                          c == '{' ? "object" : "array");
            fail_plain(p, &t);
            return -1;
        }
        p->i++;
        v->kind = c == '{' ? JV_DICT : JV_LIST;
        return c == '{' ? parse_object(p, depth, repr, top, ntop) : parse_array(p, depth, repr);
    case 'n':
        if (match(p, "null")) { p->i += 4; v->kind = JV_NULL; if (repr) nv_buf_puts(repr, "None"); return 0; }
        break;
    case 't':
        if (match(p, "true")) {
            p->i += 4;
            v->kind = JV_BOOL;
            v->truth = 1;
            if (repr) nv_buf_puts(repr, "True");
            return 0;
        }
        break;
    case 'f':
        if (match(p, "false")) { p->i += 5; v->kind = JV_BOOL; if (repr) nv_buf_puts(repr, "False"); return 0; }
        break;
    case 'N':
        if (match(p, "NaN")) { constant_refused(p, "NaN"); return -1; }
        break;
    case 'I':
        if (match(p, "Infinity")) { constant_refused(p, "Infinity"); return -1; }
        break;
    case '-':
        if (p->i + 1 < p->n && p->s[p->i + 1] == 'I' && match(p, "-Infinity")) {
            constant_refused(p, "-Infinity");
            return -1;
        }
        break;
    default:
        break;
    }
    int r = scan_number(p, v, repr);
    if (r < 0) return -1;
    if (r == 0) { fail_at(p, "Expecting value", p->i); return -1; }
    return 0;
}

/* data.decode("utf-8"): 1 with UnicodeDecodeError's text if the bytes are not UTF-8. CPython
 * reports the first bad sequence: a lead byte no sequence starts with ("invalid start byte",
 * one byte), a byte that does not continue the sequence ("invalid continuation byte", the
 * bytes up to it), or a sequence cut by the end ("unexpected end of data", to the end). */
static int utf8_error(const unsigned char *s, size_t n, nv_buf *why)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        const char *what = NULL;
        size_t end = i + 1;
        if (b < 0x80) { i++; continue; }
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            what = "invalid start byte";
            need = 0;
        }
        for (size_t k = 1; !what && k <= need; k++) {
            if (i + k >= n) {
                what = "unexpected end of data";
                end = n;
            } else if (s[i + k] < (k == 1 ? lo : 0x80) || s[i + k] > (k == 1 ? hi : 0xBF)) {
                what = "invalid continuation byte";
                end = i + k;
            }
        }
        if (!what) { i += need + 1; continue; }
        if (end - i == 1)
            nv_buf_printf(why, "'utf-8' codec can't decode byte 0x%02x in position %zu: %s", b, i, what);
        else
            nv_buf_printf(why, "'utf-8' codec can't decode bytes in position %zu-%zu: %s", i, end - 1, what);
        return 1;
    }
    return 0;
}

/* json.loads(data.decode("utf-8")): 0 with the value's kind (and, for an object, its pairs). */
static int json_load(const unsigned char *s, size_t n, nv_buf *why, jv_kind *kind, jv_pair **pairs,
                     size_t *npairs)
{
    jp p = {s, n, 0, why, 0};
    *pairs = NULL;
    *npairs = 0;
    if (utf8_error(s, n, why)) return -1;
    if (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) {
        fail_at(&p, "Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
        return -1;
    }
    ws(&p);
    jv_pair v;
    memset(&v, 0, sizeof v);
    if (parse_value(&p, 0, &v, NULL, pairs, npairs) < 0) {
        free(v.text);
        return -1;
    }
    free(v.text);
    *kind = v.kind;
    ws(&p);
    if (p.i != n) {
        fail_at(&p, "Extra data", p.i);
        free_pairs(*pairs, *npairs);
        *pairs = NULL;
        *npairs = 0;
        return -1;
    }
    return 0;
}

/* ---- semantic versions ------------------------------------------------------------------------ */

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_ident(char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-';
}

/* (0|[1-9]\d{0,8}) at s[*k]. */
static int core_number(const char *s, size_t n, size_t *k)
{
    size_t start = *k;
    if (*k >= n || !is_digit(s[*k])) return 0;
    if (s[*k] == '0') { (*k)++; return 1; }
    while (*k < n && is_digit(s[*k]) && *k - start < 9) (*k)++;
    return 1;
}

int nv_version_parse(const char *s, size_t n, nv_version *v)
{
    size_t k = 0;
    if (n > 128) return 0;
    for (int part = 0; part < 3; part++) {
        if (part && (k >= n || s[k++] != '.')) return 0;
        if (!core_number(s, n, &k)) return 0;
    }
    memset(v, 0, sizeof *v);
    v->text = s;
    v->len = n;
    v->core_len = k;
    if (k < n && s[k] == '-') {
        k++;
        v->pre_off = k;
        for (;;) {      /* 0 | [1-9]\d* | \d*[A-Za-z-][0-9A-Za-z-]* */
            size_t a = k;
            while (k < n && is_ident(s[k])) k++;
            if (k == a) return 0;
            int numeric = 1;
            for (size_t j = a; j < k; j++) if (!is_digit(s[j])) numeric = 0;
            if (numeric && s[a] == '0' && k - a > 1) return 0;
            if (k < n && s[k] == '.') { k++; continue; }
            break;
        }
        v->pre_len = k - v->pre_off;
    }
    if (k < n && s[k] == '+') {
        k++;
        for (;;) {      /* [0-9A-Za-z-]+ */
            size_t a = k;
            while (k < n && is_ident(s[k])) k++;
            if (k == a) return 0;
            if (k < n && s[k] == '.') { k++; continue; }
            break;
        }
    }
    return k == n;
}

/* Numbers without leading zeros: by length, then by digits. */
static int cmp_numeric(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) return an < bn ? -1 : 1;
    int c = memcmp(a, b, an);
    return c < 0 ? -1 : c > 0;
}

static int cmp_text(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

int nv_version_cmp(const nv_version *a, const nv_version *b)
{
    /* MAJOR.MINOR.PATCH, each compared as a number. */
    size_t ia = 0, ib = 0;
    for (int part = 0; part < 3; part++) {
        size_t sa = ia, sb = ib;
        while (ia < a->core_len && a->text[ia] != '.') ia++;
        while (ib < b->core_len && b->text[ib] != '.') ib++;
        int c = cmp_numeric(a->text + sa, ia - sa, b->text + sb, ib - sb);
        if (c) return c;
        ia++;
        ib++;
    }
    /* A release sorts after its prereleases. */
    if (!a->pre_len || !b->pre_len) return (a->pre_len == 0) - (b->pre_len == 0);
    /* Identifier by identifier: numeric before textual; a shorter list first. */
    const char *pa = a->text + a->pre_off, *pb = b->text + b->pre_off;
    const char *ea = pa + a->pre_len, *eb = pb + b->pre_len;
    while (pa < ea && pb < eb) {
        const char *qa = memchr(pa, '.', (size_t)(ea - pa)), *qb = memchr(pb, '.', (size_t)(eb - pb));
        if (!qa) qa = ea;
        if (!qb) qb = eb;
        int na = 1, nb = 1;
        for (const char *x = pa; x < qa; x++) if (!is_digit(*x)) na = 0;
        for (const char *x = pb; x < qb; x++) if (!is_digit(*x)) nb = 0;
        int c;
        if (na && nb) c = cmp_numeric(pa, (size_t)(qa - pa), pb, (size_t)(qb - pb));
        else if (na != nb) c = na ? -1 : 1;
        else c = cmp_text(pa, (size_t)(qa - pa), pb, (size_t)(qb - pb));
        if (c) return c;
        pa = qa < ea ? qa + 1 : ea;
        pb = qb < eb ? qb + 1 : eb;
    }
    return (pa < ea) - (pb < eb);
}

/* ---- times -------------------------------------------------------------------------------------- */

static int64_t num(const char *s, size_t a, size_t b)
{
    int64_t v = 0;
    for (size_t k = a; k < b; k++) v = v * 10 + (s[k] - '0');
    return v;
}

int nv_parse_time(const char *s, size_t n, int64_t *ts, nv_buf *why)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    int ok = n == 20;
    for (size_t k = 0; ok && k < 20; k++)
        ok = shape[k] == 'd' ? is_digit(s[k]) : s[k] == shape[k];
    if (!ok) {
        nv_repr_str(why, s, n);
        nv_buf_puts(why, " is not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ");
        return 0;
    }
    int64_t y = num(s, 0, 4), mo = num(s, 5, 7), d = num(s, 8, 10);
    int64_t h = num(s, 11, 13), mi = num(s, 14, 16), sec = num(s, 17, 19);
    int64_t t = nv_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    nv_buf back = {0};
    nv_format_time(&back, t);   /* a real calendar time survives the round trip */
    int same = back.n == n && memcmp(back.p, s, n) == 0;
    nv_buf_free(&back);
    if (!(mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h < 24 && mi < 60 && sec < 60) || !same) {
        nv_repr_str(why, s, n);
        nv_buf_puts(why, " is not a valid calendar time");
        return 0;
    }
    *ts = t;
    return 1;
}

/* ---- the manifest --------------------------------------------------------------------------------- */

static const struct {
    const char *key;
    jv_kind kind;
} FIELDS[] = {
    {"schema", JV_STR}, {"name", JV_STR}, {"type", JV_STR}, {"version", JV_STR},
    {"sha256", JV_STR}, {"size", JV_INT}, {"os", JV_STR}, {"arch", JV_STR},
    {"issued_at", JV_STR}, {"expires_at", JV_STR},
};
#define NFIELDS (sizeof FIELDS / sizeof FIELDS[0])

static const jv_pair *lookup(const jv_pair *pairs, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (size_t k = 0; k < n; k++)
        if (pairs[k].key_len == kl && memcmp(pairs[k].key, key, kl) == 0) return &pairs[k];
    return NULL;
}

static int name_ok(const char *s, size_t n)   /* [A-Za-z0-9][A-Za-z0-9._-]{0,127} */
{
    if (n < 1 || n > 128) return 0;
    for (size_t k = 0; k < n; k++) {
        char c = s[k];
        int alnum = is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        if (!(alnum || (k > 0 && (c == '.' || c == '_' || c == '-')))) return 0;
    }
    return 1;
}

static int token_ok(const char *s, size_t n)  /* [a-z0-9_]{1,32} */
{
    if (n < 1 || n > 32) return 0;
    for (size_t k = 0; k < n; k++)
        if (!(is_digit(s[k]) || (s[k] >= 'a' && s[k] <= 'z') || s[k] == '_')) return 0;
    return 1;
}

static int eq(const jv_pair *v, const char *s)
{
    return v->text_len == strlen(s) && memcmp(v->text, s, v->text_len) == 0;
}

static int cmp_pair_keys(const void *a, const void *b)
{
    const jv_pair *const *x = a, *const *y = b;
    return cmp_text((*x)->key, (*x)->key_len, (*y)->key, (*y)->key_len);
}

static int fields_check(const jv_pair *pairs, size_t n, const char *path, nv_manifest *m, nv_error *err)
{
    nv_buf b = {0};
    const jv_pair *schema = lookup(pairs, n, "schema");
    if (!schema || schema->kind != JV_STR || !eq(schema, SCHEMA)) {
        nv_buf_puts(&b, "unsupported manifest schema ");
        nv_buf_puts(&b, schema ? schema->repr : "None");
        nv_buf_puts(&b, " (this shim reads 'vault-plugin-shim/manifest/v1')");
        nv_fail_buf(err, NV_MANIFEST, path, "upgrade vault-plugin-shim, or sign with the schema it reads", &b);
        return -1;
    }
    /* Unknown keys, sorted (code point order is UTF-8 byte order). */
    const jv_pair **unknown = nv_xmalloc(n * sizeof *unknown);
    size_t nu = 0;
    for (size_t k = 0; k < n; k++) {
        int known = 0;
        for (size_t f = 0; f < NFIELDS; f++)
            if (pairs[k].key_len == strlen(FIELDS[f].key) &&
                memcmp(pairs[k].key, FIELDS[f].key, pairs[k].key_len) == 0) known = 1;
        if (!known) unknown[nu++] = &pairs[k];
    }
    if (nu) {
        qsort(unknown, nu, sizeof *unknown, cmp_pair_keys);
        nv_buf_puts(&b, "unknown manifest field(s) ");
        for (size_t k = 0; k < nu; k++) {
            if (k) nv_buf_puts(&b, ", ");
            nv_repr_str(&b, unknown[k]->key, unknown[k]->key_len);
        }
        free(unknown);
        nv_fail_buf(err, NV_MANIFEST, path, NULL, &b);
        return -1;
    }
    free(unknown);
    const jv_pair *val[NFIELDS];
    for (size_t f = 0; f < NFIELDS; f++) {
        val[f] = lookup(pairs, n, FIELDS[f].key);
        int optional = f == NFIELDS - 1;
        if (!val[f] && !optional) {
            nv_fail(err, NV_MANIFEST, path, NULL, "manifest field '%s' is missing", FIELDS[f].key);
            return -1;
        }
        jv_kind kind = val[f] ? val[f]->kind : JV_NULL;
        if (kind != FIELDS[f].kind && !(optional && kind == JV_NULL)) {
            nv_fail(err, NV_MANIFEST, path, NULL, "manifest field '%s' has the wrong type (%s)",
                    FIELDS[f].key, KIND_NAMES[kind]);
            return -1;
        }
    }
    const jv_pair *name = val[1], *type = val[2], *version = val[3], *sha = val[4], *size = val[5];
    if (!name_ok(name->text, name->text_len)) {
        nv_buf_puts(&b, "plugin name ");
        nv_repr_str(&b, name->text, name->text_len);
        nv_buf_puts(&b, " is not a valid Vault plugin name");
        goto bad;
    }
    if (!eq(type, "secret") && !eq(type, "auth") && !eq(type, "database")) {
        nv_buf_puts(&b, "plugin type ");
        nv_repr_str(&b, type->text, type->text_len);
        nv_buf_puts(&b, " is not one of secret, auth, database");
        goto bad;
    }
    int hex_ok = sha->text_len == 64;
    for (size_t k = 0; hex_ok && k < 64; k++)
        hex_ok = is_digit(sha->text[k]) || (sha->text[k] >= 'a' && sha->text[k] <= 'f');
    if (!hex_ok) {
        nv_buf_puts(&b, "sha256 must be 64 lower-case hex digits");
        goto bad;
    }
    /* 1..2 GiB; the literal has no leading zeros, so its length bounds it. */
    int64_t sz = 0;
    int neg = size->text[0] == '-';
    int in_range = !neg && size->text_len <= 10;
    if (in_range) {
        sz = num(size->text, 0, size->text_len);
        in_range = sz >= 1 && sz <= NV_BINARY_MAX;
    }
    if (!in_range) {
        nv_buf_printf(&b, "size %s is outside 1..%lld bytes", size->text, (long long)NV_BINARY_MAX);
        goto bad;
    }
    for (size_t f = 6; f <= 7; f++) {
        if (!token_ok(val[f]->text, val[f]->text_len)) {
            nv_buf_printf(&b, "%s ", FIELDS[f].key);
            nv_repr_str(&b, val[f]->text, val[f]->text_len);
            nv_buf_puts(&b, " is not a GOOS/GOARCH-style name");
            goto bad;
        }
    }
    int64_t issued, expires = 0;
    if (!nv_parse_time(val[8]->text, val[8]->text_len, &issued, &b)) goto bad;
    int has_expiry = val[9] && val[9]->kind == JV_STR;
    if (has_expiry && !nv_parse_time(val[9]->text, val[9]->text_len, &expires, &b)) goto bad;
    if (has_expiry && expires <= issued) {
        nv_buf_puts(&b, "expires_at is not after issued_at");
        goto bad;
    }
    nv_version v;
    if (!nv_version_parse(version->text, version->text_len, &v)) {
        nv_repr_str(&b, version->text, version->text_len);
        nv_buf_puts(&b, " is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])");
        goto bad;
    }
    m->name = nv_xstrndup(name->text, name->text_len);
    m->type = nv_xstrndup(type->text, type->text_len);
    m->sha256 = nv_xstrndup(sha->text, 64);
    m->os = nv_xstrndup(val[6]->text, val[6]->text_len);
    m->arch = nv_xstrndup(val[7]->text, val[7]->text_len);
    m->version_text = nv_xstrndup(version->text, version->text_len);
    nv_version_parse(m->version_text, version->text_len, &m->version);
    m->size = sz;
    m->issued_at = issued;
    m->expires_at = expires;
    m->has_expiry = has_expiry;
    return 0;
bad:
    nv_fail_buf(err, NV_MANIFEST, path, NULL, &b);
    return -1;
}

int nv_manifest_parse(const unsigned char *data, size_t n, const char *path, nv_manifest *m,
                      nv_error *err)
{
    memset(m, 0, sizeof *m);
    if (n > NV_MANIFEST_MAX) {
        nv_fail(err, NV_MANIFEST, path, NULL, "manifest is %zu bytes, more than %d", n, NV_MANIFEST_MAX);
        return -1;
    }
    nv_buf why = {0};
    jv_kind kind;
    jv_pair *pairs;
    size_t npairs;
    if (json_load(data, n, &why, &kind, &pairs, &npairs) < 0) {
        nv_buf b = {0};
        nv_buf_printf(&b, "manifest is not valid JSON (%s)", why.p ? why.p : "");
        nv_buf_free(&why);
        nv_fail_buf(err, NV_MANIFEST, path, NULL, &b);
        return -1;
    }
    nv_buf_free(&why);
    if (kind != JV_DICT) {
        nv_fail(err, NV_MANIFEST, path, NULL, "manifest must be a JSON object");
        return -1;
    }
    int r = fields_check(pairs, npairs, path, m, err);
    free_pairs(pairs, npairs);
    if (r < 0) nv_manifest_free(m);
    return r;
}

void nv_manifest_free(nv_manifest *m)
{
    free(m->name);
    free(m->type);
    free(m->sha256);
    free(m->os);
    free(m->arch);
    free(m->version_text);
    memset(m, 0, sizeof *m);
}
