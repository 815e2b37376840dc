/* The embedded policy of a native launcher: a fixed sequence of KEY=VALUE lines (nv.h).
 * shim/launch/build.py writes it from a Policy that Python has already validated; the
 * checks here are the same ones again, so a damaged launcher fails closed. */
#include "nv.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *s;
    size_t n, i;
} cursor;

/* The next line, without its '\n'; every line must end with one. */
static int next_line(cursor *c, const char **line, size_t *len)
{
    if (c->i >= c->n) return 0;
    const unsigned char *nl = memchr(c->s + c->i, '\n', c->n - c->i);
    if (!nl) return 0;
    *line = (const char *)c->s + c->i;
    *len = (size_t)(nl - (c->s + c->i));
    c->i += *len + 1;
    return 1;
}

/* "KEY=" then the value (no NUL, no CR). */
static int field(cursor *c, const char *key, const char **value, size_t *len)
{
    const char *line;
    size_t n, kl = strlen(key);
    if (!next_line(c, &line, &n) || n < kl + 1 || memcmp(line, key, kl) != 0 || line[kl] != '=')
        return 0;
    *value = line + kl + 1;
    *len = n - kl - 1;
    return memchr(*value, 0, *len) == NULL && memchr(*value, '\r', *len) == NULL;
}

static int bad(nv_error *err, const char *what)
{
    nv_fail(err, NV_POLICY, NULL, NULL, "the launcher's embedded policy is invalid: %s", what);
    return -1;
}

int nv_policy_parse(const unsigned char *data, size_t n, nv_policy *p, nv_error *err)
{
    memset(p, 0, sizeof *p);
    cursor c = {data, n, 0};
    const char *line, *v;
    size_t len;
    if (n > NV_POLICY_MAX) return bad(err, "larger than 64 KiB");
    if (!next_line(&c, &line, &len) || len != strlen(NV_POLICY_MAGIC) ||
        memcmp(line, NV_POLICY_MAGIC, len) != 0)
        return bad(err, "no " NV_POLICY_MAGIC " header");

    if (!field(&c, "name", &v, &len)) return bad(err, "no name line");
    p->name = nv_xstrndup(v, len);
    int name_ok = len >= 1 && len <= 128;
    for (size_t k = 0; name_ok && k < len; k++) {
        char ch = v[k];
        int alnum = (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
        name_ok = alnum || (k > 0 && (ch == '.' || ch == '_' || ch == '-'));
    }
    if (!name_ok) goto fail_name;

    if (!field(&c, "type", &v, &len)) { nv_policy_free(p); return bad(err, "no type line"); }
    p->type = nv_xstrndup(v, len);
    if (strcmp(p->type, "secret") && strcmp(p->type, "auth") && strcmp(p->type, "database")) {
        nv_policy_free(p);
        return bad(err, "type is not secret, auth or database");
    }

    if (!field(&c, "plugins_dir", &v, &len) || len == 0) {
        nv_policy_free(p);
        return bad(err, "no plugins_dir line");
    }
    p->plugins_dir = nv_xstrndup(v, len);
    if (p->plugins_dir[0] != '/') {     /* relative: below the launcher's directory, no ".." */
        const char *seg = p->plugins_dir;
        while (seg) {
            const char *slash = strchr(seg, '/');
            size_t sl = slash ? (size_t)(slash - seg) : strlen(seg);
            if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
                nv_policy_free(p);
                return bad(err, "a relative plugins_dir holds '..'");
            }
            seg = slash ? slash + 1 : NULL;
        }
        if (p->plugins_dir[0] == '~') { nv_policy_free(p); return bad(err, "plugins_dir starts with '~'"); }
    }

    if (!field(&c, "min_version", &v, &len)) { nv_policy_free(p); return bad(err, "no min_version line"); }
    if (len) {
        p->min_version_text = nv_xstrndup(v, len);
        if (!nv_version_parse(p->min_version_text, len, &p->min_version)) {
            nv_policy_free(p);
            return bad(err, "min_version is not a semantic version");
        }
    }

    if (!field(&c, "max_size", &v, &len) || len < 1 || len > 10) {
        nv_policy_free(p);
        return bad(err, "no max_size line");
    }
    int64_t max = 0;
    for (size_t k = 0; k < len; k++) {
        if (v[k] < '0' || v[k] > '9' || (k == 0 && v[k] == '0')) {
            nv_policy_free(p);
            return bad(err, "max_size is not a number");
        }
        max = max * 10 + (v[k] - '0');
    }
    if (max < 1 || max > NV_BINARY_MAX) { nv_policy_free(p); return bad(err, "max_size is not within 1..2 GiB"); }
    p->max_size = max;

    if (!field(&c, "on_refused_newer", &v, &len)) { nv_policy_free(p); return bad(err, "no on_refused_newer line"); }
    if (len == 8 && memcmp(v, "fallback", 8) == 0) p->refuse_newer = 0;
    else if (len == 6 && memcmp(v, "refuse", 6) == 0) p->refuse_newer = 1;
    else { nv_policy_free(p); return bad(err, "on_refused_newer is not fallback or refuse"); }

    if (!field(&c, "mode", &v, &len)) { nv_policy_free(p); return bad(err, "no mode line"); }
    if (len == 4 && memcmp(v, "exec", 4) == 0) p->proxy = 0;
    else if (len == 5 && memcmp(v, "proxy", 5) == 0) p->proxy = 1;
    else { nv_policy_free(p); return bad(err, "mode is not exec or proxy"); }

    for (;;) {
        size_t save = c.i;
        if (!field(&c, "key", &v, &len)) { c.i = save; break; }
        if (p->nkeys == NV_KEYS_MAX) { nv_policy_free(p); return bad(err, "more than 64 keys"); }
        nv_error kerr = {0};
        if (nv_pubkey_parse_line(v, len, &p->keys[p->nkeys], &kerr) < 0) {
            nv_error_clear(&kerr);
            nv_policy_free(p);
            return bad(err, "a key line is not a minisign public key");
        }
        /* Two different keys with one id: minisign picks by id, so refuse (policy.py). */
        for (size_t k = 0; k < p->nkeys; k++)
            if (memcmp(p->keys[k].key_id, p->keys[p->nkeys].key_id, NV_KEY_ID_LEN) == 0 &&
                memcmp(p->keys[k].pk, p->keys[p->nkeys].pk, 32) != 0) {
                nv_policy_free(p);
                return bad(err, "two different trusted keys share a key id");
            }
        p->nkeys++;
    }
    if (p->nkeys == 0) { nv_policy_free(p); return bad(err, "no trusted key"); }
    if (!next_line(&c, &line, &len) || len != 3 || memcmp(line, "end", 3) != 0 || c.i != n) {
        nv_policy_free(p);
        return bad(err, "no end line, or bytes after it");
    }
    return 0;
fail_name:
    nv_policy_free(p);
    return bad(err, "name is not a valid Vault plugin name");
}

void nv_policy_free(nv_policy *p)
{
    free(p->name);
    free(p->type);
    free(p->plugins_dir);
    free(p->min_version_text);
    memset(p, 0, sizeof *p);
}
