/* libFuzzer: versions (parse, and order against themselves and a split of the input) and
 * manifest times (parse, and the round trip through the formatter). */
#include "nv.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const char *s = (const char *)data;
    nv_version a, b;
    size_t half = size / 2;
    int pa = nv_version_parse(s, half, &a), pb = nv_version_parse(s + half, size - half, &b);
    if (pa && pb && nv_version_cmp(&a, &b) != -nv_version_cmp(&b, &a)) abort();
    if (pa && nv_version_cmp(&a, &a) != 0) abort();
    int64_t ts;
    nv_buf why = {0};
    if (nv_parse_time(s, size, &ts, &why)) {
        nv_buf back = {0};
        nv_format_time(&back, ts);
        if (back.n != size || memcmp(back.p, s, size) != 0) abort();
        nv_buf_free(&back);
    }
    nv_buf_free(&why);
    return 0;
}
