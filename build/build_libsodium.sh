#!/usr/bin/env bash
# libsodium as a static library for musl (linux/amd64 and linux/arm64), for the native
# launcher (shim/launch/stubs/native/). Reproducible and cached.
#
#   bash build/build_libsodium.sh           fetch (once), build (once per arch), print the prefix
#   bash build/build_libsodium.sh --prefix ARCH   only print where ARCH's build is (no work)
#
# Why not Debian's libsodium-dev: its libsodium.a is built against glibc with
# _FORTIFY_SOURCE, so it references glibc-only symbols (__explicit_bzero_chk) and does not
# link with musl. So we build the same source Debian ships, with its patches
# (1.0.18-1+deb12u1: upstream 1.0.18 plus the CVE-2025-69277 fix), with musl.
#
# Source: the Debian source package, fetched once through a private apt state directory and
# checked against the sha256s pinned below (build/debian_source.sh, shared with the other
# library's script).
#
# Build: autoreconf (Debian builds it that way too: the .orig tarball is a git export
# without configure), then configure --enable-minimal --disable-asm --disable-shared, and
# the library alone, in an emptied environment with fixed flags (one section per function,
# so the launcher's link keeps only what it calls: --gc-sections). --enable-minimal keeps what
# the launcher calls (crypto_sign_verify_detached, crypto_generichash, crypto_hash_sha256)
# and drops most of the rest; --disable-asm keeps the build to portable C (the assembly is
# for curve25519 and salsa20, which the launcher does not use). SHA-256 is libsodium's
# portable C (no SHA-NI): a known cost, see issue 20.
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/vault-plugin-shim/libsodium-<version>/ holds the
# source files (src/), and one prefix per arch (amd64/, arm64/: lib/libsodium.a, include/).
# A build stamp records the inputs; delete the directory to rebuild from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.0.18-1+deb12u1
UPSTREAM=1.0.18
declare -A SHA256=(
  ["libsodium_${VERSION}.dsc"]=2c23c57b5a9385dab5a1916014c9b5f2cdd7dadeb8a35b28c1bfb603ce7095c4
  ["libsodium_${UPSTREAM}.orig.tar.gz"]=d59323c6b712a1519a5daf710b68f5e7fde57040845ffec53850911f10a5d4f4
  ["libsodium_${VERSION}.debian.tar.xz"]=f410474e46346b06b162defa05b1be26906aeed6cf309e3d4ebe30b4d1350733
)
# Bump this when a flag below changes, so cached builds are redone.
RECIPE=2

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-shim/libsodium-$VERSION"
ARCHES=(amd64 arm64)

if [ "${1:-}" = "--prefix" ]; then
  echo "$CACHE/${2:?usage: $0 --prefix ARCH}"
  exit 0
fi

log() { echo "build_libsodium.sh: $*" >&2; }
PACKAGE=libsodium
# shellcheck source=build/debian_source.sh
source build/debian_source.sh

# Unpack the .orig tarball, apply Debian's patches (debian/patches/series, in order), and
# generate configure. Done once into src/tree, shared by both arches (builds are out of tree).
prepare() {
  local tree="$CACHE/src/tree"
  [ -f "$tree/.prepared-$RECIPE" ] && return 0
  debian_source_unpack "$tree"
  (cd "$tree" && env -i PATH=/usr/bin:/bin LC_ALL=C autoreconf -fi >/dev/null 2>&1)
  touch "$tree/.prepared-$RECIPE"
}

build_arch() {
  local arch="$1" cc host musl_lib
  case "$arch" in
    amd64) cc=x86_64-linux-gnu-gcc; host=x86_64-linux-musl; musl_lib=/usr/lib/x86_64-linux-musl ;;
    arm64) cc=aarch64-linux-gnu-gcc; host=aarch64-linux-musl; musl_lib=/usr/lib/aarch64-linux-musl ;;
  esac
  local prefix="$CACHE/$arch" stamp="$CACHE/$arch/.built-$RECIPE"
  [ -f "$stamp" ] && return 0
  if ! command -v "$cc" >/dev/null || [ ! -f "$musl_lib/musl-gcc.specs" ]; then
    log "cannot build for linux/$arch: its musl toolchain is missing (bash build/install.sh installs it)"
    return 1
  fi
  log "building libsodium $VERSION for linux/$arch (musl, static)"
  local work="$CACHE/build-$arch"
  rm -rf "$work" "$prefix"
  mkdir -p "$work"
  # Fixed flags; the source and build paths are mapped away so the objects do not depend
  # on where the cache lives. -fno-ident: no compiler version in .comment.
  local cflags="-Os -fno-ident -fstack-protector-strong -ffunction-sections -fdata-sections -ffile-prefix-map=$CACHE/="
  (cd "$work" && env -i PATH=/usr/bin:/bin LC_ALL=C \
     "$CACHE/src/tree/configure" --host="$host" --prefix="$prefix" \
       --enable-minimal --disable-asm --disable-shared --enable-static --disable-pie --with-pic=no \
       --disable-dependency-tracking \
       CC="$cc -specs $musl_lib/musl-gcc.specs" CFLAGS="$cflags" AR="${cc%gcc}ar" \
       RANLIB="${cc%gcc}ranlib" > configure.log 2>&1) \
    || { log "configure failed for $arch; see $work/configure.log"; return 1; }
  (cd "$work" && env -i PATH=/usr/bin:/bin LC_ALL=C nice -n 10 make -j2 -C src/libsodium > make.log 2>&1 \
     && env -i PATH=/usr/bin:/bin LC_ALL=C make -C src/libsodium install > install.log 2>&1) \
    || { log "make failed for $arch; see $work/make.log"; return 1; }
  rm -rf "$work" "$prefix/lib/pkgconfig" "$prefix/lib/libsodium.la"
  touch "$stamp"
}

debian_source_fetch
prepare
status=0
for arch in "${ARCHES[@]}"; do
  if build_arch "$arch"; then
    log "linux/$arch: $CACHE/$arch/lib/libsodium.a (sha256 $(sha256sum < "$CACHE/$arch/lib/libsodium.a" | cut -c1-16))"
  else
    status=1
  fi
done
exit "$status"
