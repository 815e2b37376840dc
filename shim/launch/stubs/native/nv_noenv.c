/*
 * The launcher reads no environment variable: Vault's environment belongs to the plugin (it
 * gets it byte for byte) and nothing in it may steer the launcher. These two definitions make
 * that hold for everything linked in, not only for our own code: in the static launcher they
 * replace musl's getenv and secure_getenv, so a library that asks for a variable is told it is
 * not set, and musl's own getenv is not linked at all.
 *
 * Today's reader is Nettle's fat setup (a constructor, run before main): NETTLE_FAT_OVERRIDE
 * would choose the SHA-256 code instead of the CPU's features (secure_getenv), and
 * NETTLE_FAT_VERBOSE would print "libnettle: ..." lines on stderr, which Vault logs
 * (getenv). tests/native/test_native_launch.py checks both: by the symbols, and by a launch with
 * those variables set.
 *
 * Linked into the launcher binary only (build/build_stubs.sh): not into the test builds,
 * whose sanitizers read their options with getenv, nor into nv_explain.c.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>

char *getenv(const char *name)
{
    (void)name;
    return NULL;
}

char *secure_getenv(const char *name)
{
    (void)name;
    return NULL;
}
