#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the viewer's screenshot test, installing
# Debian's chromium first if there is none (as root; the package mirror must be reachable then).
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" > /dev/null; then command -v "$name"; exit 0; fi
done
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null 2>&1 \
  || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null; }
command -v chromium
