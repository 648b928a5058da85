"""Open an elit HTML report in headless Chromium and save a full-page screenshot.

Usage: python bench/report_in_browser.py elit-demo/report/report.html shot.png

Needs Debian's chromium (`apt-get install chromium`).  Prints one JSON line: the report's figure
count, how many of them the browser decoded (their natural width > 0), and the screenshot path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    report, shot = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    html = report.read_text()
    n_figures = len(re.findall(r"<img ", html))
    with tempfile.TemporaryDirectory() as profile:
        base = [browser, *FLAGS, f"--user-data-dir={profile}"]
        subprocess.run(base + ["--window-size=1200,6000", f"--screenshot={shot}", report.as_uri()],
                       check=True, capture_output=True, timeout=120)
        # Count decoded images: the DOM after scripts ran, with each image's natural width.
        probe = report.with_name("_probe.html")
        probe.write_text(html.replace("</body>", "<script>document.title=[...document.images]"
                                      ".filter(i=>i.naturalWidth>0).length</script></body>"))
        dom = subprocess.run(base + ["--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True,
                             timeout=120).stdout
        probe.unlink()
    decoded = int(re.search(r"<title>(\d+)</title>", dom).group(1))
    print(json.dumps({"report": str(report), "figures": n_figures, "decoded_in_browser": decoded, "screenshot": str(shot)}))


if __name__ == "__main__":
    main()
