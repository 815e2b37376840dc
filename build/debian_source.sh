# shellcheck shell=bash
# Sourced by build/build_libsodium.sh and build/build_nettle.sh: fetch one pinned Debian
# source package and unpack it with Debian's patches. The caller sets PACKAGE, VERSION
# (Debian's), UPSTREAM, CACHE (this package's cache directory), the associative array SHA256
# (file name -> pinned sha256 of every file of the source package) and a log function.
#
# Source: the Debian source package, fetched with apt-get (a registry we can reach) through
# a private apt state directory, so the machine's sources.list is not touched. Apt checks
# the files against Debian's signed Sources index; we check them against the pinned sha256s
# as well, so a change of the archive cannot change what we build. Nothing is fetched once
# the cache holds the files.

debian_source_verified() {  # every source file present with its pinned sha256
  local f
  for f in "${!SHA256[@]}"; do
    [ -f "$CACHE/src/$f" ] || return 1
    [ "$(sha256sum < "$CACHE/src/$f" | cut -c1-64)" = "${SHA256[$f]}" ] || return 1
  done
}

debian_source_fetch() {
  debian_source_verified && return 0
  local apt_dir="$CACHE/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$CACHE/src"
  cat > "$apt_dir/sources.list" <<'LIST'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian-security bookworm-security main
LIST
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o "APT::Sandbox::User=root" -qq)
  log "fetching the Debian source package $PACKAGE $VERSION"
  apt-get "${opts[@]}" update
  if ! (cd "$CACHE/src" && apt-get "${opts[@]}" source --download-only "$PACKAGE=$VERSION"); then
    # Debian keeps only current versions in its archive: a newer security upload replaces
    # this one. Then bump VERSION and the sha256s (apt-cache showsrc PACKAGE lists them),
    # rebuild the stubs (bash build/build_stubs.sh) and commit them.
    log "Debian's archive no longer offers $PACKAGE $VERSION (or cannot be reached); update the pin"
    exit 1
  fi
  rm -rf "$apt_dir"
  if ! debian_source_verified; then
    local f
    for f in "${!SHA256[@]}"; do
      log "$f: sha256 $(sha256sum < "$CACHE/src/$f" 2>/dev/null | cut -c1-64 || echo missing), pinned ${SHA256[$f]}"
    done
    log "the fetched source does not match the pinned checksums; refusing to build it"
    exit 1
  fi
}

# The .orig tarball unpacked into $1 (replaced if it exists), with Debian's patches
# (debian/patches/series, in order) applied.
debian_source_unpack() {
  local tree="$1"
  rm -rf "$tree" "$CACHE/src/unpack"
  mkdir -p "$CACHE/src/unpack"
  tar -xzf "$CACHE/src/${PACKAGE}_${UPSTREAM}.orig.tar.gz" -C "$CACHE/src/unpack"
  mv "$CACHE/src/unpack/$PACKAGE-$UPSTREAM" "$tree"
  rmdir "$CACHE/src/unpack"
  tar -xJf "$CACHE/src/${PACKAGE}_${VERSION}.debian.tar.xz" -C "$tree"
  local patch
  while read -r patch; do
    case "$patch" in ""|\#*) continue ;; esac
    patch -d "$tree" -p1 --quiet --forward < "$tree/debian/patches/$patch"
  done < "$tree/debian/patches/series"
}
