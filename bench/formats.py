"""Open every vendor sample file through `elit info`, as a user would, and print what elit makes of it.

Usage::

    python bench/formats.py [FOLDER]     # default: ../shared/data/formats beside the checkout

For each file: the reader, the number of signals, the chosen signal (and why), its shape, dtype,
the calibration as the file states it, and the pixel size in Å; or the one-line reason elit gives
for refusing it.  The exit code is 1 if any file made elit crash (an internal error, exit 1)
instead of reading or refusing it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
SKIP = {".md", ".txt"}


def elit_info(path: Path) -> tuple[int, dict | None, str]:
    """Exit code, the JSON of ``elit info --json`` (None if it printed none) and stderr."""
    done = subprocess.run([sys.executable, "-m", "elit.cli", "info", str(path), "--json"],
                          capture_output=True, text=True, timeout=300)
    try:
        doc = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        doc = None
    return done.returncode, doc, done.stderr.strip()


def main(folder: Path) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in SKIP)
    if not files:
        print(f"no sample files under {folder}")
        return 1
    crashed = 0
    print(f"{'file':<48} {'reader':<6} {'n':>2}  {'chosen signal':<16} {'shape':<10} {'dtype':<10} "
          f"{'calibration':<18} {'Å/px':>9}  note")
    for path in files:
        code, doc, err = elit_info(path)
        name = str(path.relative_to(folder))
        if doc is None:
            crashed += code not in (0, 2)
            print(f"{name:<48} {'-':<6} {'-':>2}  refused: {err.removeprefix('elit: error: ')}")
            continue
        sigs = doc["signals"]
        if doc["chosen"] is None:
            s = sigs[0]
            why = doc["why"].split(": ", 1)[-1]
            print(f"{name:<48} {doc['reader']:<6} {len(sigs):>2}  {'(none)':<16} {'x'.join(map(str, s['shape'])):<10} "
                  f"{s['dtype']:<10} {s['calibration'] or '-':<18} {s['pixel_size'] or float('nan'):>9.4g}  refused: {why}")
            continue
        s = sigs[doc["chosen"]]
        px = f"{s['pixel_size']:.4g}" if s["pixel_size"] else "unknown"
        print(f"{name:<48} {doc['reader']:<6} {len(sigs):>2}  {s['name']:<16} {'x'.join(map(str, s['shape'])):<10} "
              f"{s['dtype']:<10} {s['calibration'] or '-':<18} {px:>9}  {doc['why']}")
    print(f"\n{len(files)} files, {crashed} crashed")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
