"""Prometheus metrics: counters and histograms the stages move, and gauges read from the database at scrape time.

Counters live at module level on predictd's own registry, as the loggers do: they count what this process did,
whoever calls them. What the queue holds (studies per state, deliveries per destination and state, the age of the
oldest ready study) and the spool's free space are read when Prometheus scrapes (:class:`QueueCollector`), so every
process sharing one PostgreSQL database reports the same queue, and nothing has to be kept in step. The names are
what deploy/grafana-dashboard.json and deploy/prometheus.yml use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from predictd.daemon.log import Event, get_logger
from predictd.models.phi import exception_text

if TYPE_CHECKING:
    from predictd.daemon.db import Database
    from predictd.daemon.spool import Spool

log = get_logger("metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds ...

ASSOCIATIONS = Counter(
    "predictd_associations",
    "DICOM associations asked for, by transport (plain, tls) and outcome (accepted, refused).",
    ["transport", "outcome"],
    registry=REGISTRY,
)
INSTANCES = Counter(
    "predictd_instances_received",
    "C-STORE requests answered, by result (stored, repeat, discarded, refused, error) and DIMSE status.",
    ["result", "status"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "predictd_stage_duration_seconds",
    "Wall time of one stage call (classify may span a batch of studies).",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
STAGE_OUTCOMES = Counter(
    "predictd_stage_outcomes",
    "What a stage did to a study: advanced, deferred, retry (scheduled again) or failed.",
    ["stage", "outcome"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "predictd_delivery_attempts",
    "Documents handed to a destination, by destination and result (sent, retry, failed).",
    ["destination", "result"],
    registry=REGISTRY,
)
PREDICTIONS = Counter(
    "predictd_predictions",
    "Predictions saved, by model and result: finding, indeterminate (no class reached its threshold) or "
    "not_assessed (no radiograph in the pixels, or refused by the model's domain gate).",
    ["model", "result"],
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "predictd_model_load_seconds", "How long loading the models took at start-up.", registry=REGISTRY
)
MODELS_LOADED = Gauge("predictd_models_loaded", "Models resident in this process.", registry=REGISTRY)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - start)


class QueueCollector(Collector):
    """The queue and the spool as they are when Prometheus scrapes."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self.db = db
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        from predictd.daemon import views
        from predictd.daemon.lifecycle import StudyState

        try:
            studies = views.counts_by_state(self.db)
            deliveries = views.deliveries_by_destination(self.db)
            oldest = views.oldest_waiting_seconds(self.db, states=[StudyState.READY])
        except Exception as exc:  # the database is down: /readyz says so; the scrape still answers
            log.warning(Event.JOB_FAILED, job="metrics", reason=exception_text(exc))
            return
        by_state = GaugeMetricFamily("predictd_studies", "Studies in each state.", labels=["state"])
        for state in StudyState:
            by_state.add_metric([str(state)], studies.get(str(state), 0))
        yield by_state
        outbox = GaugeMetricFamily(
            "predictd_deliveries", "Outbox rows by destination and state.", labels=["destination", "state"]
        )
        for (destination, delivery_state), n in sorted(deliveries.items()):
            outbox.add_metric([destination, delivery_state], n)
        yield outbox
        yield GaugeMetricFamily(
            "predictd_oldest_ready_seconds",
            "How long the oldest study ready for classification has waited (0: none waiting).",
            value=oldest or 0.0,
        )
        yield GaugeMetricFamily(
            "predictd_spool_free_bytes", "Free bytes on the spool's file system.", value=self.spool.free_bytes()
        )


class Exposition:
    """What /metrics shows: the process's counters and the queue collector, one registry-like object."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = (REGISTRY, *collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()
