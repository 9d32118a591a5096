#!/bin/bash
# Screenshot a benchmark's report.html in headless Chromium (Debian: apt-get install chromium), to
# look at what a reader sees:  bash tools/screenshot_report.sh <bench out dir> [width] [height] [page]
# (page: report.html by default; claims.html for scorelift-bench claims) -> <page>_screenshot.png beside it.
set -e
dir=$(cd "$1" && pwd); w=${2:-1400}; h=${3:-4000}; page=${4:-report.html}; shot="$dir/${page%.html}_screenshot.png"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
  echo "no chromium found: apt-get install chromium" >&2; exit 2; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=$w,$h \
  --virtual-time-budget=5000 --screenshot="$shot" "file://$dir/$page" 2>/dev/null
echo "$shot"
