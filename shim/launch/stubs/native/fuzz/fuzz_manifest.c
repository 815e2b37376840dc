/* libFuzzer: the manifest parser (strict JSON, then strict fields) on arbitrary bytes. A
 * parsed manifest's version is also ordered against fixed ones and its times formatted. */
#include "nv.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    nv_manifest m;
    nv_error err = {0};
    if (nv_manifest_parse(data, size, "m", &m, &err) == 0) {
        nv_version floor;
        nv_version_parse("1.0.0-rc.1", 10, &floor);
        int c = nv_version_cmp(&m.version, &floor);
        if (c != -nv_version_cmp(&floor, &m.version)) abort();     /* antisymmetric */
        if (nv_version_cmp(&m.version, &m.version) != 0) abort();
        nv_buf b = {0};
        nv_format_time(&b, m.issued_at);
        nv_buf_free(&b);
        nv_manifest_free(&m);
    } else if (err.cls != NV_MANIFEST || !err.reason) {
        abort();
    }
    nv_error_clear(&err);
    return 0;
}
