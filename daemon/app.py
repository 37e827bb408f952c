"""Composition root: builds the database, spool, model engine, receiver, workers and scheduler; starts and stops them.

Nothing else constructs these; every dependency is passed down from here. Start-up order matters to senders: the
receiver listens first (torch is not even imported yet), then the claims of a crashed predecessor are released, then
the models load (seconds), then the workers start. A restart costs a modality no refused association.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from predictd.daemon import arrivals, audit, jobs, leases, metrics, wakeup
from predictd.daemon.audit import Auditor
from predictd.daemon.config import ConfigError, Settings, load_settings
from predictd.daemon.db import SCHEMA_HEAD, Database, utcnow
from predictd.daemon.endpoint import Endpoint, Probes
from predictd.daemon.listeners import ListenError, Receiver, bind
from predictd.daemon.log import Event, configure_logging, get_logger
from predictd.daemon.reload import Changes, changes, merged
from predictd.daemon.spool import Spool
from predictd.daemon.stage import StageContext
from predictd.daemon.syslog import SyslogSender
from predictd.daemon.tls import TlsConfigError
from predictd.daemon.worker import Worker, default_worker_name
from predictd.models.phi import exception_text

if TYPE_CHECKING:
    from predictd.models.inference import Engine

log = get_logger("app")


class StartError(RuntimeError):
    """The daemon cannot start as configured (a port in use, a certificate that does not load, two models of one
    name): one line naming what to change."""


def load_engine(settings: Settings) -> Engine | None:
    """The resident models, or None (logged loudly) when none is installed: images are still received and kept."""
    from predictd.models.card import CardError
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
            channels_last=m.channels_last,
            worker_setup=functools.partial(configure_logging, settings.log.level, settings.log.json_output),
        )
    except NoModelsError as exc:
        log.error(Event.NO_MODELS, reason=str(exc), models_dir=str(m.dir))
        return None
    except CardError as exc:  # two cards of one name, an enabled model not installed, weights that do not match
        raise StartError(f"models: {exc}") from None
    log.info(Event.MODELS_LOADED, models=engine.model_versions, device=engine.device)
    return engine


class App:
    """One predictd process: receiver + worker threads + periodic jobs over one database and spool."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
        self.db.require_head()
        self.auditor = Auditor(self.db, SyslogSender(settings.audit.syslog) if settings.audit.syslog else None)
        spool = Spool(settings.spool.dir)
        self.ctx = StageContext(  # the engine is loaded in start()
            settings=settings, db=self.db, spool=spool, engine=None, audit_with=self.auditor
        )
        done = self._sender_done if settings.queue.complete_on_release else None
        self.receiver = Receiver(settings.receive, spool, record=self._record, sender_done=done, auditor=self.auditor)
        self.workers: list[Worker] = []  # built in start(), once the models are loaded (or known to be absent)
        self.scheduler = jobs.build_scheduler(self.ctx)
        self._stopped = threading.Event()
        self._models = "loading"
        self.endpoint = self._endpoint() if settings.http.port else None

    def _endpoint(self) -> Endpoint:
        """/healthz, /readyz (these checks) and /metrics (the process's counters and the queue's gauges)."""
        checks = {
            "database": self._database_problem,
            "receiver": lambda: None if self.receiver.listening else "not listening on every configured port",
            "models": self._models_problem,
            "spool": self._spool_problem,
        }
        exposition = metrics.Exposition(metrics.QueueCollector(self.db, self.ctx.spool))
        return Endpoint(self.settings.http.host, self.settings.http.port, Probes(checks, exposition))

    def _database_problem(self) -> str | None:
        current = self.db.current_revision()
        return None if current == SCHEMA_HEAD else f"schema at {current or 'nothing'}, needs {SCHEMA_HEAD}"

    def _models_problem(self) -> str | None:
        if self.ctx.engine is not None:
            return None
        return "models are loading" if self._models == "loading" else "no model is installed"

    def _spool_problem(self) -> str | None:
        free, low = self.ctx.spool.free_bytes(), self.settings.receive.min_free_bytes
        return None if free >= low else f"spool has {free} bytes free, below receive.min_free_bytes {low}"

    def _record(self, inst: arrivals.IncomingInstance) -> bool:
        return arrivals.note_instance(self.db, inst, auditor=self.auditor)

    def _sender_done(self, study_uids: list[str], calling_ae: str) -> None:
        grace = self.settings.queue.release_grace_seconds
        marked = arrivals.sender_done(self.db, study_uids, grace_seconds=grace, actor=f"release by {calling_ae}")
        for uid in marked:
            log.info(Event.SENDER_DONE, study_uid=uid, calling_ae=calling_ae, grace_seconds=grace)
        if marked:  # the sweep's interval would add up to sweep_seconds to the wait
            jobs.sweep_at(self.scheduler, self.ctx, utcnow() + timedelta(seconds=grace))

    def start(self) -> None:
        log.info(Event.STARTING, ae_title=self.settings.receive.ae_title, port=self.settings.receive.port)
        self.auditor.record(audit.config_loaded(self.config_path, self.settings.model_dump_json()))
        try:
            if self.endpoint is not None:  # first: /healthz answers and /readyz says what is still missing
                http = self.settings.http
                bind(self.endpoint.start, "http.port", http.host, http.port)
            self.receiver.start()
        except (ListenError, TlsConfigError) as exc:
            raise StartError(str(exc)) from None
        released = leases.release_orphans(self.db, policy=self.ctx.study_policy)
        if released:
            log.warning(Event.CLAIMS_RELEASED, studies=len(released), reason="their process is gone")
        began = time.perf_counter()
        self.ctx.engine = load_engine(self.settings)
        self._models = "loaded" if self.ctx.engine is not None else "none"
        metrics.MODEL_LOAD_SECONDS.set(time.perf_counter() - began)
        metrics.MODELS_LOADED.set(len(self.ctx.engine.cards) if self.ctx.engine is not None else 0)
        name = default_worker_name(self.settings.workers.name)
        self.workers = [Worker(self.ctx, f"{name}/w{i}") for i in range(self.settings.workers.count)]
        for worker in self.workers:
            worker.start()
        self.scheduler.start()
        if not self.db.is_sqlite:  # other processes' work wakes this one's workers (LISTEN/NOTIFY)
            threading.Thread(target=wakeup.listen, args=(self.db, self._stopped), name="listen", daemon=True).start()
        self.auditor.record(audit.service("started", port=self.receiver.port, tls_port=self.receiver.tls_port))
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
        if self.scheduler.running:  # not when start() failed before it
            self.scheduler.shutdown(wait=True)
        for worker in self.workers:
            worker.stop()
        if self.ctx.engine is not None:
            self.ctx.engine.close()
        if self.endpoint is not None:
            self.endpoint.stop()
        self.auditor.record(audit.service("stopped"))
        self.db.dispose()
        log.info(Event.STOPPED)

    def run_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM, then stop gracefully; SIGHUP reloads the config file."""
        done, hangup = threading.Event(), threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            (hangup if signum == signal.SIGHUP else done).set()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _on_signal)
        try:
            self.start()
            while not done.wait(1.0):
                if hangup.is_set():
                    hangup.clear()
                    self.reload()
        finally:
            self.stop()

    def reload(self) -> None:
        """Read the config again and apply what can be applied live (daemon.reload); a file that does not load is
        logged and the daemon keeps its settings. Never raises: SIGHUP must not stop the service."""
        try:
            new = load_settings(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error(Event.CONFIG_RELOAD_FAILED, reason=str(exc), kept="the settings it runs with")
            return
        found = changes(self.settings, new)
        try:
            self._apply(new, found)
        except Exception as exc:
            log.error(Event.CONFIG_RELOAD_FAILED, reason=exception_text(exc), kept="the settings it runs with")
            return
        self.auditor.record(audit.config_loaded(self.config_path, new.model_dump_json(), reload=True))
        log.info(Event.CONFIG_RELOADED, applied=found.live, needs_restart=found.restart)

    def _apply(self, new: Settings, found: Changes) -> None:
        engine = None
        if found.models and self.ctx.engine is not None:  # load first: a model that fails keeps the old ones
            engine = load_engine(new)
        configure_logging(new.log.level, new.log.json_output)
        self.receiver.reload_callers(new.receive)
        self.auditor.forwarder = SyslogSender(new.audit.syslog) if new.audit.syslog else None
        if engine is not None:
            with self.ctx.inference_lock:
                old, self.ctx.engine = self.ctx.engine, engine
            if old is not None:
                old.close()
            metrics.MODELS_LOADED.set(len(engine.cards))
        self.settings = self.ctx.settings = merged(self.settings, new, found.live)
