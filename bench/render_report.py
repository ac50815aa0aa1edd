"""Render the HTML report of a generated dataset in headless Chromium and save a screenshot.

    python bench/render_report.py [--images 60] [--out /tmp/fastpq-report] [--height 2000]

Writes a COCO-format dataset (fastpq.datasets.synthetic), runs ``fastpq report`` on it (pq_compute with
per-image records, then fastpq.analysis.report.write_report), and has Chromium load ``index.html`` from
disk and save ``screenshot.png`` (1280 px wide) in the output folder. The page is
self-contained, so Chromium runs with networking disabled. Needs matplotlib and
``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fastpq.datasets import synthetic
from fastpq.cli import main as fastpq_main

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def screenshot(page: Path, png: Path, width: int, height: int, chromium: str) -> None:
    with tempfile.TemporaryDirectory(prefix="fastpq-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--screenshot={png}", f"--window-size={width},{height}",
                        page.resolve().as_uri()],
                       check=True, timeout=120, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "fastpq-report"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    out = Path(args.out)
    data = synthetic.write_coco_dataset(out / "data", args.images, height=(240, 480),
                                        width=(320, 640), seed=5)
    status = fastpq_main(["report", data["gt_json"], data["pred_json"], "--out",
                          str(out / "report")])
    if status:
        return status
    png = out / "report" / "screenshot.png"
    screenshot(out / "report" / "index.html", png, args.width, args.height, args.chromium)
    print(f"screenshot: {png} ({png.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
