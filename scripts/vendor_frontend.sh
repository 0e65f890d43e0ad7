#!/usr/bin/env bash
# Re-vendors the browser libraries in static/vendor from the npm registry. They are committed, so
# the web app works offline and `make run` needs no Node.js; run this only to upgrade them.
set -euo pipefail
MAPLIBRE_VERSION=5.24.1
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "maplibre-gl@${MAPLIBRE_VERSION}" >/dev/null && tar xzf ./*.tgz)
dest=static/vendor/maplibre-gl
mkdir -p "$dest"
cp "$work/package/dist/maplibre-gl.js" "$work/package/dist/maplibre-gl.css" "$dest/"
cp "$work/package/LICENSE.txt" "$dest/LICENSE.txt"
echo "$MAPLIBRE_VERSION" > "$dest/VERSION"
echo "vendored maplibre-gl ${MAPLIBRE_VERSION} into $dest"
