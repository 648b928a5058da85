"""Run every benchmark once (`make bench`); each prints one JSON line.  Not part of CI.

Real-data figures need the images' paths: set ELIT_REAL_DATA to a folder of graphene .hdf5 files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["simulate_speed.py", "--n", "1000"],
    ["ensemble_speed.py", "--quick"],
    ["demo_accuracy.py", "--doses", "5,10,30"],
    ["live_latency.py"],
]


def main() -> int:
    runs = list(RUNS)
    real = os.environ.get("ELIT_REAL_DATA")
    if real:
        runs.append(["real_data.py", *sorted(str(p) for p in Path(real).glob("*.hdf5"))])
    failed = 0
    for cmd in runs:
        print(f"# {' '.join(cmd)}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
