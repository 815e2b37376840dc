/* libFuzzer: the embedded policy format, and a public key line, on arbitrary bytes. */
#include "nv.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    nv_policy p;
    nv_error err = {0};
    if (nv_policy_parse(data, size, &p, &err) == 0) {
        if (p.nkeys < 1 || p.nkeys > NV_KEYS_MAX || p.max_size < 1 || p.max_size > NV_BINARY_MAX) abort();
        nv_policy_free(&p);
    } else if (err.cls != NV_POLICY) {
        abort();
    }
    nv_error_clear(&err);
    nv_pubkey key;
    if (size <= 1024 && nv_pubkey_parse_line((const char *)data, size, &key, &err) < 0 && err.cls != NV_KEY_FORMAT)
        abort();
    nv_error_clear(&err);
    return 0;
}
