#!/usr/bin/env bash
# Rebuild the static launcher stubs from shim/launch/stubs/stub.c, and the native exec-mode
# launchers from shim/launch/stubs/native/ (linked with libsodium and Nettle's libnettle, built
# for musl by build/build_libsodium.sh and build/build_nettle.sh, which fetch their pinned
# sources once and cache the builds), reproducibly.
#   bash build/build_stubs.sh           rebuild shim/launch/stubs/launcher-linux-{amd64,arm64}
#                                       and launcher-native-linux-{amd64,arm64}
#   bash build/build_stubs.sh --check   rebuild into a temp dir; fail if any byte differs
#                                       from the committed stubs (CI runs this)
#   bash build/build_stubs.sh --symbols DIR   build copies that keep their symbol tables into
#                                       DIR, to inspect what was linked in (tests/native/test_stub.py)
# The flags are fixed and the output holds no path, time or build id: -ffile-prefix-map
# hides the source directory, --build-id=none drops the build id, -s drops symbols, and the
# .comment section (compiler version strings from gcc and from musl's libc.a) is removed,
# so the bytes depend only on stub.c and the code generated for it. SOURCE_DATE_EPOCH does
# not matter: nothing in the build reads the time.
set -euo pipefail
cd "$(dirname "$0")/.."
STUBS=shim/launch/stubs

check=0
symbols=""
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  --symbols) symbols="${2:?usage: $0 --symbols DIR}" ;;
  *) echo "usage: $0 [--check | --symbols DIR]" >&2; exit 2 ;;
esac

# Toolchains (Debian 12): amd64 = musl-tools (musl-dev:amd64 over gcc 12); arm64 =
# musl-dev:arm64 (multiarch: dpkg --add-architecture arm64) over gcc-aarch64-linux-gnu.
# The compilers are called directly with musl's specs file rather than through the
# musl-gcc wrappers, which read REALGCC from the environment; and the whole build runs in
# an emptied environment, since gcc also reads GCC_EXEC_PREFIX, COMPILER_PATH,
# LIBRARY_PATH, CPATH and others.
TOOLS=(
  "amd64 x86_64-linux-gnu-gcc objcopy /usr/lib/x86_64-linux-musl musl-tools"
  "arm64 aarch64-linux-gnu-gcc aarch64-linux-gnu-objcopy /usr/lib/aarch64-linux-musl musl-dev:arm64 (after dpkg --add-architecture arm64) and gcc-aarch64-linux-gnu"
)

# -static -no-pie: an ET_EXEC with no PT_INTERP and no dynamic section (static-pie would
#   need a _DYNAMIC for self-relocation): nothing for a dynamic loader to read.
# -z noseparate-code: text and read-only data share pages, which keeps the file small.
CFLAGS=(-std=gnu11 -Os -Wall -Wextra -Werror -static -no-pie
        -fno-ident -fno-asynchronous-unwind-tables -fstack-protector-strong
        "-ffile-prefix-map=$PWD/=")
# shellcheck disable=SC2054  # the commas belong to -Wl, not to the array
LDFLAGS=(-Wl,--build-id=none -Wl,-z,noseparate-code -Wl,-z,noexecstack)
STRIP=(-s)
CLEAN_ENV=(env -i PATH=/usr/bin:/bin LC_ALL=C)

out_dir="$PWD/$STUBS"
if [ "$check" -eq 1 ]; then
  out_dir="$(mktemp -d)"
  trap 'rm -rf "$out_dir"' EXIT
elif [ -n "$symbols" ]; then
  mkdir -p "$symbols"
  out_dir="$(cd "$symbols" && pwd)"
  STRIP=()
fi

# The native launchers: the verifier's sources and its main, nothing else (not nv_explain.c,
# a test program). One section per function, and --gc-sections: only what is called stays.
# nv_noenv.c (null getenv and secure_getenv: nothing linked in reads Vault's environment) is
# for the launcher binary only.
NATIVE=shim/launch/stubs/native
NATIVE_SOURCES=(nv_text.c nv_minisign.c nv_manifest.c nv_policy.c nv_select.c nv_sha256.c nv_hclog.c nv_launcher.c
                nv_proxy.c nv_noenv.c)
bash build/build_libsodium.sh >/dev/null
bash build/build_nettle.sh >/dev/null

for entry in "${TOOLS[@]}"; do
  read -r arch cc objcopy musl_lib packages <<<"$entry"
  if ! command -v "$cc" >/dev/null || ! command -v "$objcopy" >/dev/null \
     || [ ! -f "$musl_lib/musl-gcc.specs" ]; then
    echo "build_stubs.sh: cannot build the linux/$arch stub: install $packages" \
         "(bash build/install.sh does)" >&2
    exit 1
  fi
  name="launcher-linux-$arch"
  "${CLEAN_ENV[@]}" "$cc" -specs "$musl_lib/musl-gcc.specs" "${CFLAGS[@]}" "${LDFLAGS[@]}" ${STRIP[@]+"${STRIP[@]}"} \
    -o "$out_dir/$name.tmp" "$STUBS/stub.c"
  # Compiler version strings from gcc's crt files and musl's libc.a: not code.
  "${CLEAN_ENV[@]}" "$objcopy" --remove-section=.comment "$out_dir/$name.tmp"
  chmod 0755 "$out_dir/$name.tmp"
  mv "$out_dir/$name.tmp" "$out_dir/$name"

  sodium="$(bash build/build_libsodium.sh --prefix "$arch")"
  nettle="$(bash build/build_nettle.sh --prefix "$arch")"
  name="launcher-native-linux-$arch"
  "${CLEAN_ENV[@]}" "$cc" -specs "$musl_lib/musl-gcc.specs" "${CFLAGS[@]}" -ffunction-sections -fdata-sections \
    -I"$sodium/include" -I"$nettle/include" "${LDFLAGS[@]}" -Wl,--gc-sections ${STRIP[@]+"${STRIP[@]}"} \
    -o "$out_dir/$name.tmp" "${NATIVE_SOURCES[@]/#/$NATIVE/}" "$sodium/lib/libsodium.a" "$nettle/lib/libnettle.a"
  "${CLEAN_ENV[@]}" "$objcopy" --remove-section=.comment "$out_dir/$name.tmp"
  chmod 0755 "$out_dir/$name.tmp"
  mv "$out_dir/$name.tmp" "$out_dir/$name"
done

if [ "$check" -eq 1 ]; then
  status=0
  for built in "$out_dir"/launcher-linux-* "$out_dir"/launcher-native-linux-*; do
    name="$(basename "$built")"
    if ! cmp -s "$built" "$STUBS/$name"; then
      echo "build_stubs.sh: $STUBS/$name differs from a rebuild of stub.c" \
           "(sha256 committed $( (sha256sum < "$STUBS/$name" || echo none) 2>/dev/null | cut -c1-16)," \
           "rebuilt $(sha256sum < "$built" | cut -c1-16)); run bash build/build_stubs.sh and commit" >&2
      status=1
    else
      echo "build_stubs.sh: $name matches ($(sha256sum < "$built" | cut -c1-64))"
    fi
  done
  exit "$status"
fi
for f in "$out_dir"/launcher-linux-* "$out_dir"/launcher-native-linux-*; do
  echo "build_stubs.sh: wrote $f ($(stat -c %s "$f") bytes, sha256 $(sha256sum < "$f" | cut -c1-64))"
done
