#!/usr/bin/env bash
# Make Debian's headless-capable Chromium available for the browser test (idempotent, quiet).
#
#   cluster/browser/install.sh
#
# Does nothing when `chromium` is already on PATH. Otherwise, when running as root on a
# Debian/Ubuntu system, installs the `chromium` package and `fonts-liberation` (only a
# recommendation of chromium's, and without any font the page's text renders as boxes) with
# apt-get. Anywhere else it says how to install it and exits 0, so
# tests/e2e/test_loop.py::test_a_browser_shows_the_loop skips with that reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found; install Debian's package as root:" \
         "apt-get install -y chromium fonts-liberation (the status page browser test will be skipped)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
command -v chromium >/dev/null
echo "installed $(chromium --version 2>/dev/null | head -n 1)" >&2
