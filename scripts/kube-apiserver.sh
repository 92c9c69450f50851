#!/usr/bin/env bash
# Provides a real Kubernetes API server (and etcd) for the membership test: no registry ships a
# prebuilt kube-apiserver, so it is built from Debian's own source package of Kubernetes
# (v1.20.2, every Go dependency vendored; about 14 minutes on 2 cores) and cached under
# ~/.cache/skein/tools by version, so only a cold machine pays for it.
#
# Prints the directory holding `kube-apiserver` and `etcd` on its last line of stdout. Exits 0
# when they are ready; when the build fails, exits 1 and leaves why in `$dir.failed`, which the
# membership test then reports as its reason to skip.
set -euo pipefail
VERSION=1.20.2
SOURCE=kubernetes_1.20.5+really1.20.2-1.1+deb12u1
DSC_SHA256=19fa1da5aefcef673894ac9511986bd98a14410cf8eea0b626613c30df435257
dir="$HOME/.cache/skein/tools/kube-apiserver-$VERSION"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { echo "kube-apiserver.sh: $*" >&2; }

record_failure() {
  [ -x "$dir/kube-apiserver" ] && return
  mkdir -p "$(dirname "$dir")"
  [ -s "$dir.failed" ] || echo "kube-apiserver.sh failed (line $1) before the build finished" >"$dir.failed"
}
trap 'record_failure $LINENO' ERR

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ! -x "$dir/kube-apiserver" ]; then
  command -v go >/dev/null 2>&1 || need+=(golang-go)
  for p in rsync dpkg-dev; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
fi
if ((${#need[@]})); then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

if [ ! -x "$dir/kube-apiserver" ]; then
  # Debian's sources: the first stanza of the system's list, as deb-src for bookworm.
  src_list=/etc/apt/sources.list.d/skein-deb-src.sources
  if [ ! -f "$src_list" ]; then
    log "adding a deb-src source"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      awk 'BEGIN{RS=""} NR==1{print; exit}' /etc/apt/sources.list.d/debian.sources |
        sed -e 's/^Types:.*/Types: deb-src/' -e 's/^Suites:.*/Suites: bookworm/'
    else
      printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
    fi | $SUDO tee "$src_list" >/dev/null
    $SUDO apt-get update -qq || true
  fi
  mkdir -p "$(dirname "$dir")"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "building kube-apiserver $VERSION from Debian's source package (about 14 minutes)"
  (
    cd "$work"
    apt-get source --download-only "kubernetes=${SOURCE#kubernetes_}" >/dev/null 2>&1 ||
      apt-get source --download-only kubernetes >/dev/null
    echo "$DSC_SHA256  $SOURCE.dsc" | sha256sum -c --quiet
    dpkg-source -x "$SOURCE.dsc" src >/dev/null
    cd src
    export GOPATH="$PWD/.go" CGO_ENABLED=0 GOCACHE="$work/go-cache"
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1 || {
      tail -20 "$work/build.log" | tee "$dir.failed" >&2
      exit 1
    }
    mkdir -p "$dir"
    cp _output/bin/kube-apiserver "$dir/kube-apiserver.part"
    mv "$dir/kube-apiserver.part" "$dir/kube-apiserver"
  ) || {
    log "the build of kube-apiserver failed"
    [ -s "$dir.failed" ] || echo "the build of kube-apiserver $VERSION failed" >"$dir.failed"
    exit 1
  }
  rm -f "$dir.failed"
fi
ln -sfn "$(command -v etcd)" "$dir/etcd"
echo "$dir"
