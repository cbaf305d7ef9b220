#!/bin/sh
# Install Debian's chromium for the report's browser test when it is missing (root only; otherwise explain).
set -e
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ -n "$AIS_CHROMIUM" ] || [ -n "$AIS_SKIP_BROWSER" ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the report's browser test (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "chromium not found: install it (Debian: apt-get install chromium), point AIS_CHROMIUM at a Chromium" >&2
echo "binary, or set AIS_SKIP_BROWSER=1 to skip the report's browser test" >&2
exit 1
