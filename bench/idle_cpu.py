"""Idle CPU and memory of `predictd serve`: CPU-seconds per minute its process tree spends with nothing to do, and
the resident memory of each of its processes at the end of the idle spell.

The serve configuration's queue and worker settings (deploy/predictd.serve.toml: the defaults), the shipped models,
SQLite in a temporary folder, no destination. Once the daemon listens, the CPU time of its process tree is read
from /proc before and after ``--seconds`` of idling; several rounds, each a fresh daemon, min and median. Memory:
VmRSS of each process (the daemon, its decode worker, the fork server) and the tree's PSS (shared pages counted once,
from /proc/PID/smaps_rollup), read after the idle spell.

    python -m bench.idle_cpu --seconds 60 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from predictd.models.install import install_shipped
from tests.support import REPO, free_port, wait_until

PREDICTD = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "predictd"
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (decode workers, the fork server)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (the fields after the command name)
    return total / TICKS


def _memory_mb(pid: int) -> tuple[dict[str, int], int]:
    """({"<pid> <command>": VmRSS MB}, the tree's PSS in MB)."""
    rss: dict[str, int] = {}
    pss = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            command = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except FileNotFoundError:
            continue
        rss[f"{p} {command}"] = int(status.split("VmRSS:")[1].split()[0]) // 1024
        pss += int(rollup.split("\nPss:")[1].split()[0]) // 1024
    return rss, pss


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def one_round(root: Path, seconds: float) -> tuple[float, dict[str, int], int]:
    port = free_port()
    config = root / "predictd.toml"
    config.write_text(
        "\n".join(
            [
                "[receive]",
                f"port = {port}",
                'host = "127.0.0.1"',
                "[spool]",
                'dir = "spool"',
                "[database]",
                'url = "sqlite:///predictd.db"',
                "[models]",
                'dir = "models"',
                'device = "cpu"',
                "[send]",
                'outbox_dir = "outbox"',
                "[log]",
                'level = "WARNING"',
            ]
        )
        + "\n"
    )
    subprocess.run([str(PREDICTD), "--config", str(config), "db", "upgrade"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [str(PREDICTD), "--config", str(config), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _listening(port), timeout=120, what="serve listening")
        time.sleep(5)  # the engine loads after the receiver listens: let start-up finish before measuring
        before = _cpu_seconds(proc.pid)
        time.sleep(seconds)
        cpu = (_cpu_seconds(proc.pid) - before) * 60.0 / seconds
        return (cpu, *_memory_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_minute, pss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        install_shipped(Path(tmp) / "models")
        for _ in range(args.rounds):
            cpu, rss, tree_pss = one_round(Path(tmp), args.seconds)
            per_minute.append(cpu)
            pss.append(tree_pss)
            print("RSS MB: " + ", ".join(f"{name}: {mb}" for name, mb in rss.items()) + f"; tree PSS {tree_pss} MB")
            for leftover in ("predictd.db", "spool"):
                subprocess.run(["rm", "-rf", str(Path(tmp) / leftover)], check=True)
    print(f"idle CPU-seconds per minute: min {min(per_minute):.3f}  median {statistics.median(per_minute):.3f}")
    print(f"idle tree PSS MB: min {min(pss)}  median {statistics.median(pss)}")


if __name__ == "__main__":
    main()
