/*
 * Proxy mode in the native launcher (nv_proxy.c): the native part selects, verifies and seals
 * exactly as in exec mode, then starts the Python proxy with the sealed descriptor and its
 * verdict; and select-only mode, which a hot-swapping proxy runs for each rescan.
 *
 * The hooks nv_launcher.c calls, in order:
 *   read_policy     a "VPNATV\0\2" trailer: nv_proxy_layout checks the Python part
 *   main            nv_proxy_early, once the policy is parsed (mode against layout; select-only)
 *   seal_and_check  nv_proxy_skipped (select-only: a release hot swap asked to pass over)
 *   main            nv_proxy_run, before exec mode's exec (proxy: never returns)
 */
#ifndef NV_PROXY_H
#define NV_PROXY_H

#include "nv.h"

#include <stdint.h>

#define NV_PROXY_TRAILER_MAGIC "VPNATV\0\2"
#define NV_PROXY_EXT_SIZE 40                /* meta_off, meta_len, code_off, code_len, flags */
#define NV_PROXY_FLAG_HOT_SWAP 1u
#define NV_PROXY_META_MAX 4096              /* stub.c: META_MAX */
#define NV_PROXY_PREFIX_MAX 16              /* stub.c: PREFIX_MAX */
#define NV_PROXY_SELF_MAX 4096              /* nv_launcher.c: EXE_MAX, the size of self_path */
#define NV_PROXY_SKIPS_MAX 256
#define NV_PROXY_SELECT_ONLY "--vault-plugin-shim-select-only="
#define NV_PROXY_SKIP "--vault-plugin-shim-skip="

/* The launcher's own file (fd, size bytes) ends in the proxy trailer, whose policy starts at
 * policy_off: checks that meta, code and policy follow each other up to the extension (every
 * byte accounted for), reads meta, keeps a descriptor of the file, and returns where the policy
 * ends. A file that is not consistent: one hclog error line naming self_path, exit 1. */
uint64_t nv_proxy_layout(int fd, uint64_t size, uint64_t policy_off, const char *self_path);

/* After the policy is parsed. A proxy-mode policy needs the Python part and an exec-mode one
 * must not have it (else: the file is damaged). A proxy launcher whose argv[1] is
 * NV_PROXY_SELECT_ONLY "<fd>" runs in select-only mode, and only when that fd is a unix
 * SOCK_SEQPACKET socket made by its parent process (a hot-swapping launcher's handover
 * socket); then self_path (NV_PROXY_SELF_MAX bytes) becomes argv[0], the launcher's path as the
 * launch recorded it, and every further argument must be an NV_PROXY_SKIP entry. Anything else
 * with the marker: one hclog error line, exit 1 (fails closed; nothing is selected). */
void nv_proxy_early(const nv_policy *p, int argc, char **argv, char *self_path);

/* select-only mode: 1 with err set (RejectedError) when c is a release hot swap asked to pass
 * over (it failed to take over before); 0 otherwise, and always outside select-only mode. */
int nv_proxy_skipped(const nv_candidate *c, nv_error *err);

/* The chosen candidate's sealed, verified copy is fd (made as `how`). Exec mode: returns.
 * Proxy mode: starts the interpreter on the code (as stub.c does) with the descriptor and the
 * verdict in its context; select-only mode: sends the descriptor and the verdict over the
 * handover socket and exits 0. Never returns in either. */
void nv_proxy_run(const nv_selection *s, int fd, const char *how, int argc, char **argv, char **envp);

/* One NV_PROXY_SKIP argument (without the prefix): "<sha256>:<issued_at>:<version>:<reason>",
 * 64 lower-case hex digits, a decimal Unix time, a semantic version, a non-empty reason.
 * Pure (the fuzz target calls it). 0 and *out (pointing into arg), or -1. */
typedef struct {
    const char *sha256;         /* 64 bytes, not NUL-terminated */
    int64_t issued_at;
    const char *version;        /* version_len bytes */
    size_t version_len;
    const char *reason;         /* NUL-terminated (the rest of arg) */
} nv_proxy_skip;
int nv_proxy_parse_skip(const char *arg, nv_proxy_skip *out);

#endif
