/* libFuzzer: minisign signature files (lines, comments, strict base64, algorithm) on arbitrary
 * bytes, then verification against a fixed key over fixed data, so that the parsed fields
 * reach libsodium too. */
#include "nv.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char PK[] = "RWQBAgMEBQYHCAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static nv_pubkey key;
    static int ready;
    nv_error err = {0};
    if (!ready) {
        if (sodium_init() < 0 || nv_pubkey_parse_line(PK, strlen(PK), &key, &err) < 0) abort();
        ready = 1;
    }
    nv_signature sig;
    if (nv_sig_parse(data, size, "s", &sig, &err) == 0) {
        if (sig.trusted_comment_len > NV_TRUSTED_COMMENT_MAX) abort();
        nv_sig_verify((const unsigned char *)"{\"hello\": 1}\n", 13, &sig, &key, 1, "s", &err);
    } else if (err.cls != NV_SIGNATURE_FORMAT) {
        abort();
    }
    nv_error_clear(&err);
    return 0;
}
