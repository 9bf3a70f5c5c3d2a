#!/usr/bin/env bash
# Make Debian's Prometheus server and promtool available for the tests (idempotent, quiet).
#
#   cluster/prometheus/install.sh
#
# Does nothing when `prometheus` and `promtool` are already on PATH. Otherwise, when running as
# root on a Debian/Ubuntu system, installs the `prometheus` package with apt-get (without
# starting its service: the tests start their own server on 127.0.0.1). Anywhere else it says
# how to install it and exits 0, so the tests that need it skip with that reason.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus/promtool not found; install Debian's package as root:" \
         "apt-get install -y prometheus (Prometheus tests will be skipped)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the package's service from starting (policy-rc.d is honoured by invoke-rc.d).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
echo "installed $(prometheus --version 2>&1 | head -n 1)" >&2
