"""Wall time of the operator's `predictd queue ls` on an empty SQLite queue, next to two peers.

The peers: a bare interpreter start, and the floor of the stack the CLI is built on: one interpreter importing only
the packages `queue ls` cannot do without (typer and rich for the command and its table, SQLAlchemy's ORM and SQLite
dialect for the query, the pydantic settings for the database URL), none of predictd's own modules beyond the
config. What `queue ls` takes beyond the floor is predictd's own. Rounds interleave the three (the machine is shared
and noisy); min and median over the rounds.

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

STACK_FLOOR = (
    "import typer, rich.table, rich.console, sqlalchemy.orm, sqlalchemy.dialects.sqlite, predictd.daemon.config"
)
"""What `queue ls` cannot do without importing: its command line, its table, its query and its settings."""


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
        times: dict[str, list[float]] = {"python -c pass": [], "stack floor": [], "predictd queue ls": []}
        for _ in range(args.rounds):
            times["python -c pass"].append(_wall([sys.executable, "-c", "pass"], REPO))
            times["stack floor"].append(_wall([sys.executable, "-c", STACK_FLOOR], REPO))
            times["predictd queue ls"].append(_wall([str(PREDICTD), "--config", "p.toml", "queue", "ls"], root))
    for name, values in times.items():
        print(f"{name:20s} min {min(values):.3f} s   median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
