/* libFuzzer: select-only mode's release-to-skip argument (nv_proxy.c, nv_proxy_parse_skip),
 * the one parser of proxy mode's native part. A hot-swapping proxy writes it; the launcher
 * reads it only once its handover socket checked out, but it is parsed strictly all the same.
 * Checks: what parses has 64 lower-case hex digits, a version that parses, a non-empty reason
 * that is the rest of the input, and prints back to the same bytes. */
#include "nv_proxy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size > 4096 || memchr(data, 0, size)) return 0;     /* argv strings hold no NUL */
    char *arg = malloc(size + 1);
    if (!arg) return 0;
    memcpy(arg, data, size);
    arg[size] = 0;
    nv_proxy_skip s;
    if (nv_proxy_parse_skip(arg, &s) == 0) {
        for (int i = 0; i < 64; i++)
            if (!strchr("0123456789abcdef", s.sha256[i])) abort();
        nv_version v;
        if (!nv_version_parse(s.version, s.version_len, &v) || !*s.reason) abort();
        if (s.reason + strlen(s.reason) != arg + size) abort();
        char back[64 + 1 + 24 + 1];
        int n = snprintf(back, sizeof back, "%.64s:%" PRId64 ":", s.sha256, s.issued_at);
        if (n < 0 || (size_t)n > size || memcmp(back, arg, (size_t)n) != 0) abort();
        if (memcmp(arg + n, s.version, s.version_len) != 0 || arg[n + s.version_len] != ':') abort();
    }
    free(arg);
    return 0;
}
