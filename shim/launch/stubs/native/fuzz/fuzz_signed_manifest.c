/* libFuzzer: the whole pure decision on one candidate (check_signed_manifest): the input is a
 * manifest, which the harness signs with a fixed key (prehashed ED, a trusted comment, the
 * global signature), so every input gets past the signature and exercises the manifest parse
 * and the checks against a fixed policy (name, type, platform, floor, expiry, skew, size). */
#include "nv.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static unsigned char pk[32], sk[64];
static nv_policy policy;

static void setup(void)
{
    unsigned char seed[32];
    for (int i = 0; i < 32; i++) seed[i] = (unsigned char)i;
    if (sodium_init() < 0 || crypto_sign_seed_keypair(pk, sk, seed) != 0) abort();
    memset(&policy, 0, sizeof policy);
    policy.name = strdup("my-plugin");
    policy.type = strdup("secret");
    policy.plugins_dir = strdup("/p");
    policy.min_version_text = strdup("1.0.0-rc.1");
    if (!nv_version_parse(policy.min_version_text, strlen(policy.min_version_text), &policy.min_version)) abort();
    policy.max_size = 1 << 20;
    memcpy(policy.keys[0].key_id, "\1\2\3\4\5\6\7\10", 8);
    memcpy(policy.keys[0].pk, pk, 32);
    policy.nkeys = 1;
}

static void b64(nv_buf *b, const unsigned char *p, size_t n)
{
    char out[256];
    sodium_bin2base64(out, sizeof out, p, n, sodium_base64_VARIANT_ORIGINAL);
    nv_buf_puts(b, out);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static int ready;
    if (!ready) { setup(); ready = 1; }
    unsigned char prehash[64], blob[74], global[64], msg[64 + 32];
    crypto_generichash(prehash, 64, data, size, NULL, 0);
    memcpy(blob, "ED\1\2\3\4\5\6\7\10", 10);
    crypto_sign_detached(blob + 10, NULL, prehash, 64, sk);
    static const char comment[] = "fuzz";
    memcpy(msg, blob + 10, 64);
    memcpy(msg + 64, comment, 4);
    crypto_sign_detached(global, NULL, msg, 68, sk);
    nv_buf sig = {0};
    nv_buf_puts(&sig, "untrusted comment: x\n");
    b64(&sig, blob, sizeof blob);
    nv_buf_puts(&sig, "\ntrusted comment: fuzz\n");
    b64(&sig, global, sizeof global);
    nv_buf_puts(&sig, "\n");
    nv_manifest m;
    int has = 0, key = -1;
    nv_error err = {0};
    int r = nv_check_signed_manifest(&policy, data, size, (const unsigned char *)sig.p, sig.n, 1800000000,
                                     "linux", "amd64", "/p/x.manifest.json", &m, &has, &key, &err);
    if (r == 0 && (!has || key != 0 || err.cls != NV_OK)) abort();
    if (r < 0 && (err.cls == NV_OK || err.cls == NV_SIGNATURE_FORMAT || err.cls == NV_BAD_SIGNATURE ||
                  err.cls == NV_UNKNOWN_KEY))
        abort();    /* the harness's own signature is always good */
    if (has) nv_manifest_free(&m);
    nv_error_clear(&err);
    nv_buf_free(&sig);
    return 0;
}
