#!/usr/bin/env bash
# Installs the Debian packages the tests drive for real (GDAL clients, PostgreSQL, Chromium for the
# web app's browser tests), when missing.
set -euo pipefail
missing=()
command -v gdalinfo >/dev/null || missing+=(gdal-bin)
# A real PostgreSQL server, for the test that runs the catalogue on it.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
# Debian's Chromium, which Playwright drives in tests/test_webapp.py (never a downloaded browser).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "tiledetect: please install these Debian packages: ${missing[*]}" >&2
  exit 1
fi
echo "tiledetect: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
