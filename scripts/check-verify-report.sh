#!/usr/bin/env bash
# Renders a `mm1pack verify --html` report with headless Chromium and checks that the screenshot shows the
# per-stage error chart: the black total line, the first probe's blue line and the status badge must be drawn.
#   scripts/check-verify-report.sh REPORT.html [SCREENSHOT.png]
set -euo pipefail
html=$(realpath "$1")
png=${2:-${html%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "check-verify-report: no chromium found (apt-get install chromium)" >&2; exit 2; }
rm -f "$png"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1000 \
  --screenshot="$png" "file://$html" >/dev/null 2>&1 || true
[ -s "$png" ] || { echo "check-verify-report: $browser wrote no screenshot of $html" >&2; exit 1; }
python3 - "$png" <<'PY'
import sys
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
w, h = img.size
px = img.load()
def near(c, ref, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(c, ref))
counts = {"black total line": 0, "blue probe line": 0, "status badge": 0}
for y in range(h):
    for x in range(w):
        c = px[x, y]
        if near(c, (0x1f, 0x77, 0xb4), 30):
            counts["blue probe line"] += 1
        if near(c, (0x2c, 0xa0, 0x2c), 30) or near(c, (0xd6, 0x27, 0x28), 30):
            counts["status badge"] += 1
        # Only the chart's total line and its markers are pure black (the page's text is dark grey).
        if c == (0, 0, 0):
            counts["black total line"] += 1
missing = [k for k, v in counts.items() if v < 50]
print(f"check-verify-report: {sys.argv[1]} {w}x{h}: " + ", ".join(f"{k} {v} px" for k, v in counts.items()))
if missing:
    sys.exit("check-verify-report: the screenshot does not show: " + ", ".join(missing))
PY
