"""``predictd serve`` as a subprocess, configured like a site would: a TOML file, free ports, its own folders.

Used by the end-to-end tests; the daemon runs exactly as `make serve` runs it, only with a tiny test model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from predictd.models.card import Label
from predictd.models.demo import write_model
from predictd.models.install import install_shipped
from tests.support import REPO, free_port, wait_until

PREDICTD = Path(sys.executable).parent / "predictd"


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


class PredictdServer:
    """Start with ``with PredictdServer(tmp_path) as p:``; ``p.port``, ``p.cli(...)``, ``p.log_text()``."""

    def __init__(
        self,
        root: Path,
        *,
        ae_title: str = "PREDICTD",
        port: int | None = None,
        destinations: list[dict[str, Any]] | None = None,
        quiet_seconds: float = 1.0,
        key_images: bool = False,
        shipped: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        shipped_send: bool = False,
        serve_defaults: bool = False,
        extra_toml: str = "",
    ) -> None:
        """``shipped``: the models predictd ships, installed as `make serve` installs them, instead of a tiny one.
        ``env`` adds to the daemon's environment; ``cwd`` is its working folder (default: the repository).
        ``shipped_send``: the shipped delivery backoff and probe, instead of the tests' fast retries.
        ``serve_defaults``: the queue's and workers' shipped timings (sweep, poll, backoff), not the tests' ones.
        ``extra_toml``: more tables, appended to the config file (``[http]``, ``[audit.syslog]`` ...)."""
        self.root, self.ae_title, self.port = root, ae_title, port or free_port()
        self.env, self.cwd = env or {}, cwd or REPO
        self.config = root / "predictd.toml"
        self.log_path = root / "predictd.log"
        self.outbox = root / "outbox"
        lines = [
            "[receive]",
            f'ae_title = "{ae_title}"',
            'host = "127.0.0.1"',
            f"port = {self.port}",
            "min_free_bytes = 1000000",
            "[database]",
            'url = "sqlite:///var/predictd.db"',
            "[spool]",
            'dir = "var/spool"',
            "[models]",
            'dir = "models"',
            'device = "cpu"',
            "[send]",
            'outbox_dir = "outbox"',
            *([] if shipped_send else ["backoff_base_seconds = 0.5", "backoff_cap_seconds = 2.0"]),
            "[queue]",
            f"quiet_seconds = {quiet_seconds}",
            *([] if serve_defaults else ["sweep_seconds = 0.2", "backoff_base_seconds = 0.5"]),
            "[workers]",
            *([] if serve_defaults else ["poll_seconds = 0.1"]),
            "[report]",
            f"key_images = {'true' if key_images else 'false'}",
            "[log]",
            'level = "INFO"',
        ]
        for dest in destinations or []:
            lines.append("[[send.destinations]]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in dest.items()]
        lines.append(extra_toml)
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n")
        if shipped:
            install_shipped(root / "models")
        else:
            write_model(
                root / "models" / "tiny_hip",
                name="tiny_hip",
                task="hip_hardware",
                labels=(Label("none", "no hardware"), Label("tha", "total hip arthroplasty")),
            )
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PREDICTD), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=True,
        )

    def storescu(self, path: Path) -> None:
        """Send one file as a modality would: dcmtk storescu, JPEG-LS proposed, Nagle off (see pacs-peers.md)."""
        subprocess.run(
            ["storescu", "-aec", self.ae_title, "-xt", "127.0.0.1", str(self.port), str(path)],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "TCP_NODELAY": "1"},
        )

    def queue_ls(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("queue", "ls", "--json").stdout)
        return rows

    def study_state(self, study_uid: str) -> str | None:
        return next((r["state"] for r in self.queue_ls() if r["study_uid"] == study_uid), None)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _echo_ok(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"predictd serve exited with {self.proc.returncode}:\n{self.log_text()}")
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status and status.Status == 0)

    def __enter__(self) -> PredictdServer:
        self.cli("db", "upgrade")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(PREDICTD), "--config", str(self.config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        wait_until(self._echo_ok, timeout=90, interval=0.3, what="predictd to answer C-ECHO")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
