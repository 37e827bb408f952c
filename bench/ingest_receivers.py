"""The Python receivers bench/ingest.py compares, each run as its own process: predictd's and a bare pynetdicom SCP.

    python -m bench.ingest_receivers predictd --port P --root DIR      # Receiver + SQLite queue, as `serve` wires it
    python -m bench.ingest_receivers pynetdicom --port P --root DIR    # the floor: rename the received file, no more
    python -m bench.ingest_receivers pynetdicom --poll 0.0001 ...      # the same with pynetdicom's 1 ms polls cut
    python -m bench.ingest_receivers predictd --steps ...              # prints where a C-STORE's handler time went

Both print ``listening`` once the port is bound and serve until killed (SIGTERM). The bare SCP is what pynetdicom
gives for free with the settings predictd uses (chunked receive, unlimited PDU, the same transfer syntaxes): the
received temporary file is renamed into a folder, with no fsync, no header check and no database. Whatever predictd
costs beyond it is predictd's own. ``--poll`` measures pynetdicom's own wall: its association thread sleeps a fixed
1 ms between looks at its message queue (``Association._run_reactor``) and its DUL thread 1 ms when idle
(``DULServiceProvider._run_loop_delay``); both are replaced by the given delay (an experiment, patched here only).
``--steps`` times predictd's handler and its parts per call (wall time, in the receiving thread) and prints their
medians as one JSON line when terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import threading
import time
import types
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, association, evt

from predictd.daemon import incoming, receive

try:
    from predictd.daemon import arrivals
except ImportError:  # a checkout from before 06b01b4 (bench.ingest --predictd-tree): these lived in daemon.queue
    from predictd.daemon import queue as arrivals  # type: ignore[no-redef]
try:
    from predictd.daemon.audit import Auditor
    from predictd.daemon.listeners import Receiver
except ImportError:  # a checkout from before 07b9e4b (no audit trail; the Receiver lived in daemon.receive)
    from predictd.daemon.receive import Receiver  # type: ignore[attr-defined,no-redef]

    Auditor = None  # type: ignore[assignment,misc]
from predictd.daemon.config import ReceiveSettings
from predictd.daemon.db import Database
from predictd.daemon.log import configure_logging
from predictd.daemon.receive import IMAGE_SOP_CLASSES, VERIFICATION, accepted_transfer_syntaxes
from predictd.daemon.spool import Spool

AE_TITLE = "PREDICTD"


def run_predictd(port: int, root: Path, steps: bool = False) -> None:
    """The receive path of `predictd serve` (receiver, spool, SQLite queue, completion on release), nothing else;
    logging at serve's default level (a line per instance, to stderr)."""
    configure_logging("INFO")
    timings: dict[str, list[float]] = {}
    if steps:
        receive.handle_store = _timed(receive.handle_store, "handler", timings)  # type: ignore[assignment]
        receive.read_header = _timed(receive.read_header, "header check", timings)  # type: ignore[assignment]
        Spool.adopt_instance = _timed(Spool.adopt_instance, "spool (fsync, rename, fsync)", timings)  # type: ignore[method-assign]
        arrivals.note_instance = _timed(arrivals.note_instance, "database row", timings)  # type: ignore[assignment]
    db = Database(f"sqlite:///{root / 'predictd.db'}")
    db.upgrade()
    settings = ReceiveSettings(
        ae_title=AE_TITLE, host="127.0.0.1", port=port, min_free_bytes=0, allowed_calling_aets=["STORESCU"]
    )
    done = lambda uids, ae: arrivals.sender_done(db, uids, grace_seconds=1.0, actor=f"receive:{ae}")  # noqa: E731
    if Auditor is None:
        receiver = Receiver(
            settings, Spool(root / "spool"), record=lambda i: arrivals.note_instance(db, i), sender_done=done
        )
    else:  # as `serve` wires it: each instance's audit record in its row's transaction, associations audited
        auditor = Auditor(db)
        receiver = Receiver(
            settings,
            Spool(root / "spool"),
            record=lambda inst: arrivals.note_instance(db, inst, auditor=auditor),
            sender_done=done,
            auditor=auditor,
        )
    receiver.start()
    _serve_until_terminated(receiver.stop)
    if steps:
        medians = {name: round(statistics.median(values) * 1000, 3) for name, values in timings.items()}
        print("steps " + json.dumps({"median ms": medians, "calls": len(timings.get("handler", []))}), flush=True)


def _timed(fn: Any, name: str, into: dict[str, list[float]]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.setdefault(name, []).append(time.perf_counter() - start)

    return timed


def run_pynetdicom(port: int, root: Path, poll: float | None = None) -> None:
    """A bare pynetdicom Storage SCP: the received temporary file renamed into ``root``; no fsync, no database."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    if poll is not None:
        _shorten_polls(poll)
    incoming.install(root)  # pynetdicom's temporary files on the same file system, so a rename is enough
    out = root / "files"
    out.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        os.replace(event.dataset_path, out / f"{event.request.AffectedSOPInstanceUID}.dcm")
        return 0x0000

    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 16
    syntaxes = accepted_transfer_syntaxes()
    ae.add_supported_context(VERIFICATION)
    for uid in IMAGE_SOP_CLASSES:
        ae.add_supported_context(uid, syntaxes)
    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    if poll is not None:
        handlers.append((evt.EVT_CONN_OPEN, lambda event: setattr(event.assoc.dul, "_run_loop_delay", poll)))
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    _serve_until_terminated(ae.shutdown)


def _shorten_polls(delay: float) -> None:
    """Every fixed sleep of pynetdicom's association module of 1 ms or less becomes ``delay``."""
    real_sleep = time.sleep
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    shim.sleep = lambda seconds: real_sleep(min(seconds, delay) if seconds <= 0.001 else seconds)
    association.time = shim  # type: ignore[attr-defined]


def _serve_until_terminated(stop: Any) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("listening", flush=True)
    done.wait()
    stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["predictd", "pynetdicom"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--poll", type=float, help="pynetdicom only: its 1 ms polling sleeps become this (s)")
    parser.add_argument("--steps", action="store_true", help="predictd only: print the handler's step times")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.kind == "predictd":
        run_predictd(args.port, args.root, args.steps)
    else:
        run_pynetdicom(args.port, args.root, args.poll)


if __name__ == "__main__":
    main()
