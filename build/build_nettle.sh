#!/usr/bin/env bash
# GNU Nettle's libnettle as a static library for musl (linux/amd64 and linux/arm64), for the
# native launcher's SHA-256 (shim/launch/stubs/native/nv_sha256.c). Reproducible and cached.
#
#   bash build/build_nettle.sh              fetch (once), build (once per arch), print the prefix
#   bash build/build_nettle.sh --prefix ARCH   only print where ARCH's build is (no work)
#
# Why Nettle: libsodium (which the launcher keeps for Ed25519 and BLAKE2b) has only a portable
# C SHA-256. Nettle (GnuTLS's crypto library: small and well kept) built "fat" selects its
# SHA-256 compression function at run time: x86_64 SHA-NI (x86_64/sha_ni/sha256-compress.asm,
# chosen in fat-x86_64.c by CPUID) and ARMv8 SHA2 (arm64/fat/sha256-compress-2.asm, chosen in
# fat-arm64.c by getauxval(AT_HWCAP)), and its portable code otherwise (x86_64:
# x86_64/sha256-compress.asm; arm64: sha256-compress.c).
# Why not Debian's nettle-dev: its libnettle.a is built for glibc with _FORTIFY_SOURCE (it
# references __fprintf_chk), so it does not link with musl. So we build the same source
# Debian ships, with its patches (3.8.1-2), with musl. The tests' sanitizer builds (clang on
# glibc) use nettle-dev itself.
#
# Source: the Debian source package, fetched once through a private apt state directory and
# checked against the sha256s pinned below (build/debian_source.sh, shared with the other
# library's script).
#
# One patch of ours, after Debian's: build/nettle-arm64-musl-getauxval.patch. Upstream's
# fat-arm64.c asks the kernel for the CPU's features (getauxval(AT_HWCAP)) only under glibc;
# under musl it would see none and never use the SHA2 instructions. The patch takes the same
# getauxval path on any Linux libc (musl has it since 1.1.0); it changes which code is
# chosen, no cryptographic code. tests/native/test_native_sha256.py runs the arm64 build under qemu
# (-cpu max, -cpu cortex-a53) and checks that Nettle chose the SHA2 code; without the patch it
# says "cpu features:" and nothing more.
#
# Build: the .orig tarball is upstream's release tarball (configure included); Debian's one
# patch (fPIC.patch) edits configure itself, so nothing is regenerated. Every file of the
# prepared tree gets one fixed mtime, so make never decides to rerun autoconf or autoheader.
# Then configure --enable-fat --disable-public-key (libnettle only: no hogweed, so no GMP)
# --disable-shared --disable-pic --disable-documentation --disable-openssl, and
# `make libnettle.a` alone, in an emptied environment with fixed flags (one section per
# function, so the launcher's link keeps only what it calls: --gc-sections). -O2, as Debian
# builds it: the portable fallback is C on arm64.
#
# Fat setup reads NETTLE_FAT_OVERRIDE (secure_getenv) and NETTLE_FAT_VERBOSE (getenv) in a
# constructor. The launcher reads no environment variable: it links its own null getenv and
# secure_getenv (nv_noenv.c), so in the launcher nettle always detects the CPU itself and
# never prints.
#
# Reproducible: two builds in different cache directories (XDG_CACHE_HOME=/tmp/a and /tmp/b)
# give identical libnettle.a files for both arches (checked with cmp): -ffile-prefix-map maps
# the cache path away, -fno-ident drops the compiler version, and Debian's ar is
# deterministic (no times, uids or modes in the archive).
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/vault-plugin-shim/nettle-<version>/ holds the source files
# (src/), and one prefix per arch (amd64/, arm64/: lib/libnettle.a, include/nettle/). A build
# stamp records the inputs; delete the directory to rebuild from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.8.1-2
UPSTREAM=3.8.1
declare -A SHA256=(
  ["nettle_${VERSION}.dsc"]=a437e204da67612efb656cab354835f358b44c077c5c0a46d6e8c30b5c0bddff
  ["nettle_${UPSTREAM}.orig.tar.gz"]=364f3e2b77cd7dcde83fd7c45219c834e54b0c75e428b6f894a23d12dd41cbfe
  ["nettle_${UPSTREAM}.orig.tar.gz.asc"]=71fe31c44728fdc144cbf12f30ca5d483992c17fd23afabe58f89d4201f66ddb
  ["nettle_${VERSION}.debian.tar.xz"]=8f1eae9c6afffe545de294140f33d53352261478268dafee5ef72d840e1b3d7b
)
# Bump this when a flag below changes, so cached builds are redone (our patch's sha256 is
# part of the stamps too).
RECIPE=1
OUR_PATCH="$PWD/build/nettle-arm64-musl-getauxval.patch"
RECIPE="$RECIPE-$(sha256sum < "$OUR_PATCH" | cut -c1-16)"

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-shim/nettle-$VERSION"
ARCHES=(amd64 arm64)

if [ "${1:-}" = "--prefix" ]; then
  echo "$CACHE/${2:?usage: $0 --prefix ARCH}"
  exit 0
fi

log() { echo "build_nettle.sh: $*" >&2; }
PACKAGE=nettle
# shellcheck source=build/debian_source.sh
source build/debian_source.sh

# Unpack the .orig tarball and apply Debian's patches (debian/patches/series, in order). Done
# once into src/tree, shared by both arches (builds are out of tree).
prepare() {
  local tree="$CACHE/src/tree"
  [ -f "$tree/.prepared-$RECIPE" ] && return 0
  debian_source_unpack "$tree"
  patch -d "$tree" -p1 --quiet --forward < "$OUR_PATCH"
  # One mtime for every file: the patched aclocal.m4 and configure must not look newer than
  # config.h.in and stamp-h.in (make would rerun autoheader).
  find "$tree" -exec touch -h -d @1000000000 {} +
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
  if ! command -v m4 >/dev/null; then
    log "cannot build: m4 is missing (nettle's assembly is m4 source; bash build/install.sh installs it)"
    return 1
  fi
  log "building nettle $VERSION for linux/$arch (musl, static, fat)"
  local work="$CACHE/build-$arch"
  rm -rf "$work" "$prefix"
  mkdir -p "$work"
  # Fixed flags; the source and build paths are mapped away so the objects do not depend
  # on where the cache lives. -fno-ident: no compiler version in .comment.
  local cflags="-O2 -fno-ident -fstack-protector-strong -ffunction-sections -fdata-sections -ffile-prefix-map=$CACHE/="
  (cd "$work" && env -i PATH=/usr/bin:/bin LC_ALL=C \
     "$CACHE/src/tree/configure" --host="$host" --prefix="$prefix" --libdir="$prefix/lib" \
       --enable-fat --disable-public-key --disable-shared --enable-static --disable-pic \
       --disable-documentation --disable-openssl --disable-gcov --disable-dependency-tracking \
       CC="$cc -specs $musl_lib/musl-gcc.specs" CFLAGS="$cflags" AR="${cc%gcc}ar" \
       RANLIB="${cc%gcc}ranlib" NM="${cc%gcc}nm" > configure.log 2>&1) \
    || { log "configure failed for $arch; see $work/configure.log"; return 1; }
  # CFLAGS again on make's command line: configure appends -ggdb3 and warnings for gcc.
  (cd "$work" && env -i PATH=/usr/bin:/bin LC_ALL=C nice -n 10 make -j2 CFLAGS="$cflags" libnettle.a > make.log 2>&1) \
    || { log "make failed for $arch; see $work/make.log"; return 1; }
  # The point of this library: both SHA-256 compression functions and the run-time choice
  # (on arm64, by getauxval: our patch).
  local want syms s
  case "$arch" in
    amd64) want="_nettle_sha256_compress_sha_ni _nettle_sha256_compress_x86_64 _nettle_sha256_compress_vec" ;;
    arm64) want="_nettle_sha256_compress_arm64 _nettle_sha256_compress_c _nettle_sha256_compress_vec getauxval" ;;
  esac
  syms="$(env -i PATH=/usr/bin:/bin LC_ALL=C "${cc%gcc}nm" "$work/libnettle.a" 2>/dev/null)"
  for s in $want; do
    if ! grep -qE " [TtDdbBU] $s\$" <<<"$syms"; then
      log "linux/$arch: libnettle.a has no $s: Nettle would not choose its SHA-256 code at run time as expected; see $work/configure.log"
      return 1
    fi
  done
  (cd "$work" && env -i PATH=/usr/bin:/bin LC_ALL=C make CFLAGS="$cflags" install-headers install-static > install.log 2>&1) \
    || { log "make install failed for $arch; see $work/install.log"; return 1; }
  rm -rf "$work"
  touch "$stamp"
}

debian_source_fetch
prepare
status=0
for arch in "${ARCHES[@]}"; do
  if build_arch "$arch"; then
    log "linux/$arch: $CACHE/$arch/lib/libnettle.a (sha256 $(sha256sum < "$CACHE/$arch/lib/libnettle.a" | cut -c1-16))"
  else
    status=1
  fi
done
exit "$status"
