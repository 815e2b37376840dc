/*
 * hclog JSON lines on stderr, as shim/goplugin/hclog.py writes them: control characters in
 * messages and values are first written as visible escapes (\n, \x01, \u2028...), so a
 * file name cannot forge lines in Vault's text log; bytes that are not UTF-8 become '?'.
 */
#include "nv.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* hclog.escape(), then the inside of a JSON string. */
static void put_escaped(nv_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '\n') { nv_buf_puts(b, "\\\\n"); i++; }
        else if (c == '\r') { nv_buf_puts(b, "\\\\r"); i++; }
        else if (c == '\t') { nv_buf_puts(b, "\\\\t"); i++; }
        else if (c < 0x20 || c == 0x7F) { nv_buf_printf(b, "\\\\x%02x", c); i++; }
        else if (c == '"' || c == '\\') { nv_buf_putc(b, '\\'); nv_buf_putc(b, (char)c); i++; }
        else if (c < 0x80) { nv_buf_putc(b, (char)c); i++; }
        else {
            size_t k = nv_utf8_len(s + i, n - i);
            if (k == 0) { nv_buf_putc(b, '?'); i++; continue; }
            if (k == 2 && s[i] == 0xC2 && s[i + 1] == 0x85) nv_buf_puts(b, "\\\\x85");
            else if (k == 3 && s[i] == 0xE2 && s[i + 1] == 0x80 && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9))
                nv_buf_printf(b, "\\\\u%s", s[i + 2] == 0xA8 ? "2028" : "2029");
            else nv_buf_put(b, s + i, k);
            i += k;
        }
    }
}

static void put_timestamp(nv_buf *b)
{
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_REALTIME, &ts);
    nv_buf t = {0};
    nv_format_time(&t, (int64_t)ts.tv_sec);      /* ...SSZ: put the microseconds before the Z */
    nv_buf_put(b, t.p, t.n - 1);
    nv_buf_free(&t);
    nv_buf_printf(b, ".%06ldZ", (long)(ts.tv_nsec / 1000));
}

void nv_log_begin(nv_log *l, const char *level, const char *message, size_t message_len)
{
    memset(l, 0, sizeof *l);
    nv_buf_puts(&l->line, "{\"@level\":\"");
    nv_buf_puts(&l->line, level);
    nv_buf_puts(&l->line, "\",\"@message\":\"");
    put_escaped(&l->line, message, message_len);
    nv_buf_puts(&l->line, "\",\"@module\":\"vault-plugin-shim\",\"@timestamp\":\"");
    put_timestamp(&l->line);
    nv_buf_putc(&l->line, '"');
}

void nv_log_field(nv_log *l, const char *key, const char *value, size_t n)
{
    nv_buf_puts(&l->line, ",\"");
    nv_buf_puts(&l->line, key);
    nv_buf_puts(&l->line, "\":\"");
    put_escaped(&l->line, value, n);
    nv_buf_putc(&l->line, '"');
}

void nv_log_fieldz(nv_log *l, const char *key, const char *value)
{
    nv_log_field(l, key, value, strlen(value));
}

/* Diagnostic.fields(): error, reason, file, cause, fix (the empty ones left out). */
void nv_log_error_fields(nv_log *l, const nv_error *e)
{
    nv_log_fieldz(l, "error", nv_class_name(e->cls));
    nv_log_fieldz(l, "reason", e->reason ? e->reason : "");
    if (e->path && *e->path) nv_log_fieldz(l, "file", e->path);
    if (e->cause && *e->cause) nv_log_fieldz(l, "cause", e->cause);
    const char *fix = nv_error_fix(e);
    if (*fix) nv_log_fieldz(l, "fix", fix);
}

void nv_log_end(nv_log *l, int fd)
{
    nv_buf_puts(&l->line, "}\n");
    const char *p = l->line.p;
    size_t left = l->line.n;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;      /* stderr closed or broken: nothing else to tell */
        p += w;
        left -= (size_t)w;
    }
    nv_buf_free(&l->line);
}

/* sealed.log_rejections: one line per rejected candidate, at most NV_MAX_REJECTION_LINES
 * at warn or error. An older version rightly skipped (expired, below the floor) while a
 * newer one runs is routine (debug); an older one refused for another reason is a warning;
 * anything else is an error. */
void nv_log_rejections(const nv_selection *s, int fd)
{
    const nv_candidate *chosen = s->chosen >= 0 ? &s->cands[s->chosen] : NULL;
    size_t loud = 0;
    for (size_t k = 0; k < s->ncands; k++) {
        const nv_candidate *c = &s->cands[k];
        if (c->error.cls == NV_OK) continue;
        int older = chosen && c->has_manifest &&
                    nv_version_cmp(&c->manifest.version, &chosen->manifest.version) < 0;
        const char *level = older && (c->error.cls == NV_EXPIRED || c->error.cls == NV_ROLLBACK) ? "debug"
                            : older ? "warn" : "error";
        if (strcmp(level, "debug") != 0 && ++loud > NV_MAX_REJECTION_LINES) continue;
        nv_buf m = {0};
        nv_buf_puts(&m, "vault-plugin-shim: rejected candidate ");
        nv_buf_puts(&m, c->error.path && *c->error.path ? c->error.path : c->path);
        nv_buf_puts(&m, ": ");
        nv_buf_puts(&m, c->error.reason ? c->error.reason : "");
        nv_log l;
        nv_log_begin(&l, level, m.p, m.n);
        nv_buf_free(&m);
        nv_log_fieldz(&l, "candidate", c->binary);
        nv_log_error_fields(&l, &c->error);
        nv_log_end(&l, fd);
    }
    if (loud > NV_MAX_REJECTION_LINES) {
        nv_buf m = {0};
        nv_buf_printf(&m, "vault-plugin-shim: %zu more rejected candidates in %s not logged",
                      loud - NV_MAX_REJECTION_LINES, s->plugins_dir);
        nv_log l;
        nv_log_begin(&l, "error", m.p, m.n);
        nv_buf_free(&m);
        nv_log_fieldz(&l, "plugin", s->policy->name);
        nv_log_fieldz(&l, "fix", "run `vault-plugin-shim doctor --launcher <launcher>` on this node to list "
                                 "them all, and remove what does not belong in the plugins directory");
        nv_log_end(&l, fd);
    }
}

void nv_log_one_thread(int copying, const char *file)
{
    static const char copy[] = "vault-plugin-shim: cannot start a second thread to copy while hashing; "
                               "reading, hashing and copying one piece at a time (the launch is slower)";
    static const char hash[] = "vault-plugin-shim: cannot start a second thread to read while hashing; "
                               "reading and hashing one piece at a time (slower)";
    nv_log l;
    if (copying) nv_log_begin(&l, "warn", copy, sizeof copy - 1);
    else nv_log_begin(&l, "warn", hash, sizeof hash - 1);
    nv_log_fieldz(&l, "file", file);
    nv_log_fieldz(&l, "fix", "raise the pod's pids limit (the Vault container's process and thread count is near "
                             "its cgroup's pids.max)");
    nv_log_end(&l, 2);
}

_Noreturn void nv_fail_error(const char *message, const nv_error *e)
{
    nv_log l;
    nv_log_begin(&l, "error", message, strlen(message));
    nv_log_error_fields(&l, e);
    nv_log_end(&l, 2);
    _exit(1);
}

_Noreturn void nv_fail_launch(const char *message, const char *path, const char *reason, int err, const char *fix)
{
    nv_error e = {0};
    e.cls = NV_LAUNCH;
    e.reason = nv_xstrndup(reason, strlen(reason));
    e.path = path ? nv_xstrndup(path, strlen(path)) : NULL;
    e.cause = err ? nv_xstrndup(strerror(err), strlen(strerror(err))) : NULL;
    e.fix = fix;
    nv_fail_error(message, &e);
}
