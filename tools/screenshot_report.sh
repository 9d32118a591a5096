#!/bin/bash
# Screenshot a benchmark's report.html in headless Chromium (Debian: apt-get install chromium), to
# look at what a reader sees:  bash tools/screenshot_report.sh <bench out dir> [width] [height]
set -e
dir=$(cd "$1" && pwd); w=${2:-1400}; h=${3:-4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
  echo "no chromium found: apt-get install chromium" >&2; exit 2; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=$w,$h \
  --virtual-time-budget=5000 --screenshot="$dir/report_screenshot.png" "file://$dir/report.html" 2>/dev/null
echo "$dir/report_screenshot.png"
