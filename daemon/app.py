"""Composition root: builds the database, spool, model engine, receiver, workers and scheduler; starts and stops them.

Nothing else constructs these; every dependency is passed down from here. Start-up order matters to senders: the
receiver listens first (torch is not even imported yet), then the claims of a crashed predecessor are released, then
the models load (seconds), then the workers start. A restart costs a modality no refused association.
"""

from __future__ import annotations

import functools
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

from predictd.daemon import arrivals, jobs, leases, wakeup
from predictd.daemon.config import Settings
from predictd.daemon.db import Database, utcnow
from predictd.daemon.log import Event, configure_logging, get_logger
from predictd.daemon.receive import Receiver
from predictd.daemon.spool import Spool
from predictd.daemon.stage import StageContext
from predictd.daemon.worker import Worker, default_worker_name

if TYPE_CHECKING:
    from predictd.models.inference import Engine

log = get_logger("app")


def load_engine(settings: Settings) -> Engine | None:
    """The resident models, or None (logged loudly) when none is installed: images are still received and kept."""
    from predictd.models.inference import Engine  # torch and timm: seconds, so after the receiver listens
    from predictd.models.loading import NoModelsError

    m = settings.models
    try:
        engine = Engine.load(
            m.dir,
            m.enabled,
            device=m.device,
            batch_size=m.batch_size,
            decode_workers=m.decode_workers,
            torch_threads=m.torch_threads,
            compile=m.compile,
            worker_setup=functools.partial(configure_logging, settings.log.level, settings.log.json_output),
        )
    except NoModelsError as exc:
        log.error(Event.NO_MODELS, reason=str(exc), models_dir=str(m.dir))
        return None
    log.info(Event.MODELS_LOADED, models=engine.model_versions, device=engine.device)
    return engine


class App:
    """One predictd process: receiver + worker threads + periodic jobs over one database and spool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
        self.db.require_head()
        spool = Spool(settings.spool.dir)
        self.ctx = StageContext(settings=settings, db=self.db, spool=spool, engine=None)  # loaded in start()
        done = self._sender_done if settings.queue.complete_on_release else None
        self.receiver = Receiver(settings.receive, spool, record=self._record, sender_done=done)
        self.workers: list[Worker] = []  # built in start(), once the models are loaded (or known to be absent)
        self.scheduler = jobs.build_scheduler(self.ctx)
        self._stopped = threading.Event()

    def _record(self, inst: arrivals.IncomingInstance) -> bool:
        return arrivals.note_instance(self.db, inst)

    def _sender_done(self, study_uids: list[str], calling_ae: str) -> None:
        grace = self.settings.queue.release_grace_seconds
        marked = arrivals.sender_done(self.db, study_uids, grace_seconds=grace, actor=f"release by {calling_ae}")
        for uid in marked:
            log.info(Event.SENDER_DONE, study_uid=uid, calling_ae=calling_ae, grace_seconds=grace)
        if marked:  # the sweep's interval would add up to sweep_seconds to the wait
            jobs.sweep_at(self.scheduler, self.ctx, utcnow() + timedelta(seconds=grace))

    def start(self) -> None:
        log.info(Event.STARTING, ae_title=self.settings.receive.ae_title, port=self.settings.receive.port)
        self.receiver.start()
        released = leases.release_orphans(self.db, policy=self.ctx.study_policy)
        if released:
            log.warning(Event.CLAIMS_RELEASED, studies=len(released), reason="their process is gone")
        self.ctx.engine = load_engine(self.settings)
        name = default_worker_name(self.settings.workers.name)
        self.workers = [Worker(self.ctx, f"{name}/w{i}") for i in range(self.settings.workers.count)]
        for worker in self.workers:
            worker.start()
        self.scheduler.start()
        if not self.db.is_sqlite:  # other processes' work wakes this one's workers (LISTEN/NOTIFY)
            threading.Thread(target=wakeup.listen, args=(self.db, self._stopped), name="listen", daemon=True).start()
        log.info(
            Event.STARTED,
            ae_title=self.settings.receive.ae_title,
            host=self.settings.receive.host,
            port=self.receiver.port,
            workers=len(self.workers),
            database=self.db.engine.url.get_backend_name(),
        )

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info(Event.STOPPING)
        self.receiver.stop()  # first: no new images while the workers finish
        self.scheduler.shutdown(wait=True)
        for worker in self.workers:
            worker.stop()
        if self.ctx.engine is not None:
            self.ctx.engine.close()
        self.db.dispose()
        log.info(Event.STOPPED)

    def run_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM, then stop gracefully."""
        done = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
