#!/usr/bin/env bash
# Create (or reuse) .venv-tflite-support: TFLite Support 0.4.4 in its own venv.
#
# tflite-support 0.4.4 (the last release) pins protobuf < 4, while TensorFlow 2.21 needs
# protobuf >= 6.31, so it cannot live in the project's .venv. The tests use its
# MetadataDisplayer as an independent reader of the metadata that tfedge writes.
# Its native library needs Debian's libusb-1.0-0.
#
# Idempotent: does nothing (apart from a quick import check) when everything is already there.
#
# Usage: scripts/tflite-support-venv.sh [VENV_DIR]     (default: <repo>/.venv-tflite-support)
# Environment: PYTHON (default python3) is the interpreter the venv is made from.
# Exit status: 0 ready; 1 cannot be set up (the reason is on stderr).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-tflite-support}"
python="${PYTHON:-python3}"
spec="tflite-support==0.4.4"

say() { echo "tflite-support-venv: $*" >&2; }

# 1. libusb-1.0-0 (the native part of tflite-support links against libusb-1.0.so.0).
have_libusb() {
    # (grep without -q: with pipefail, -q would make ldconfig die of SIGPIPE.)
    PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep 'libusb-1\.0\.so\.0' >/dev/null && return 0
    compgen -G '/usr/lib/*/libusb-1.0.so.0' >/dev/null || compgen -G '/lib/*/libusb-1.0.so.0' >/dev/null
}
if ! have_libusb; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian package libusb-1.0-0"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || { say "apt-get update failed (no network?)"; exit 1; }
            apt-get install -y -qq libusb-1.0-0 >/dev/null || { say "apt-get install libusb-1.0-0 failed"; exit 1; }
        fi
    else
        say "libusb-1.0.so.0 is missing; install it with: sudo apt-get install -y libusb-1.0-0"
        exit 1
    fi
fi

check() { "$venv/bin/python" -c 'from tflite_support import metadata' >/dev/null 2>&1; }

# 2. The venv with tflite-support.
if [ -x "$venv/bin/python" ] && check; then
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv" || { say "'$python -m venv $venv' failed"; exit 1; }
fi
say "installing $spec into $venv"
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec"; then
    say "'pip install $spec' failed (no network, or no wheel for $("$venv/bin/python" --version 2>&1))"
    exit 1
fi
if ! check; then
    "$venv/bin/python" -c 'from tflite_support import metadata' >&2 || true
    say "tflite_support is installed in $venv but does not import (see above)"
    exit 1
fi
say "ready: $venv"
