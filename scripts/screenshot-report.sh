#!/bin/sh
# Renders a biodc HTML report in headless Chromium and writes a PNG screenshot.
#   scripts/screenshot-report.sh REPORT_DIR OUT.png [WIDTH,HEIGHT]
# Needs Debian's chromium (apt-get install chromium). The flags keep Chromium off the network
# (the report needs none) and out of the user's profile.
set -eu
dir=$1
out=$2
size=${3:-1280,2400}
chrome=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$chrome" ]; then
    echo "no chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
page=$(cd "$dir" && pwd)/index.html
timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="$size" \
    --screenshot="$out" "file://$page" >/dev/null 2>&1
test -s "$out"
echo "$out"
