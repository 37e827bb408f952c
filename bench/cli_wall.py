"""Wall time of the operator's `predictd queue ls` on an empty SQLite queue, next to a bare interpreter start.

Rounds interleave the two (the machine is shared and noisy); min and median over the rounds.

    python -m bench.cli_wall --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import REPO

PREDICTD = Path(sys.executable).with_name("predictd")


def _wall(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p.toml").write_text('[database]\nurl = "sqlite:///q.db"\n[spool]\ndir = "spool"\n')
        subprocess.run(
            [str(PREDICTD), "--config", "p.toml", "db", "upgrade"], cwd=root, check=True, capture_output=True
        )
        times: dict[str, list[float]] = {"python -c pass": [], "predictd queue ls": []}
        for _ in range(args.rounds):
            times["python -c pass"].append(_wall([sys.executable, "-c", "pass"], REPO))
            times["predictd queue ls"].append(_wall([str(PREDICTD), "--config", "p.toml", "queue", "ls"], root))
    for name, values in times.items():
        print(f"{name:20s} min {min(values):.3f} s   median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
