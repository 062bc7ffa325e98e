#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real: PostgreSQL (a shared Optuna study database) and a
# headless Chromium (HTML reports are checked in a browser). Missing packages only skip those tests, with a reason.
set -euo pipefail
need=()
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || need+=(chromium-headless-shell)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
if [ "$sudo" = "none" ] || ! command -v apt-get >/dev/null; then
  echo "note: ${need[*]} missing and not installable here (needs apt-get and root or sudo); their tests will be skipped" >&2
  exit 0
fi
echo "installing Debian's ${need[*]} ..."
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } \
  || echo "note: installing ${need[*]} failed; their tests will be skipped" >&2
