"""structlog set-up, the fixed event names, and PHI redaction.

Every log line is JSON with a fixed ``event`` name, so operators can alert on names rather than on prose.
Patient names, IDs and birth dates never reach a log: a processor drops any key that could carry them, callers
pass only UIDs, AE titles, states and reasons, and every value is scrubbed of quoted text (:func:`models.phi.scrub`),
which is where library messages put the values they choke on. The stdlib loggers (pynetdicom, pydicom, APScheduler)
and Python warnings go through the same processors, so every line on stderr is JSON and scrubbed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from enum import StrEnum
from typing import Any

import structlog

from predictd.models.phi import scrub


class Event(StrEnum):
    """Every event name predictd logs."""

    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CONFIG_WARNING = "config_warning"
    ASSOCIATION_REJECTED = "association_rejected"
    ECHO_RECEIVED = "echo_received"
    INSTANCE_STORED = "instance_stored"
    INSTANCE_DUPLICATE = "instance_duplicate"
    INSTANCE_REJECTED = "instance_rejected"
    INSTANCE_IGNORED = "instance_ignored"
    STUDY_READY = "study_ready"
    SENDER_DONE = "sender_done"
    STUDY_REOPENED = "study_reopened"
    STUDY_CLAIMED = "study_claimed"
    STATE_CHANGED = "state_changed"
    PREDICTION_MADE = "prediction_made"
    STUDY_SKIPPED = "study_skipped"
    STUDY_NOT_ASSESSED = "study_not_assessed"
    SR_BUILT = "sr_built"
    SR_SENT = "sr_sent"
    SEND_FAILED = "send_failed"
    STAGE_FAILED = "stage_failed"
    STAGE_RETRY_SCHEDULED = "stage_retry_scheduled"
    LEASE_EXPIRED = "lease_expired"
    CLAIMS_RELEASED = "claims_released"
    SOURCE_VALUES_EMPTIED = "source_values_emptied"
    DESTINATION_RECOVERED = "destination_recovered"
    PURGED = "purged"
    INCOMING_SWEPT = "incoming_swept"
    MODELS_LOADED = "models_loaded"
    NO_MODELS = "no_models"
    JOB_FAILED = "job_failed"
    HTTP_LISTENING = "http_listening"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_RELOAD_FAILED = "config_reload_failed"


# Keys that could carry protected health information; dropped from every event, whatever the caller passed.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "birth_date",
        "other_patient_ids",
        "patient_address",
        "accession_number",
    }
)


def redact_phi(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop keys that could carry patient identity."""
    for key in list(event_dict):
        if key.lower() in PHI_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


STRUCTURAL_KEYS = frozenset({"event", "timestamp", "level", "component", "logger"})
_EVENT_NAMES = frozenset(e.value for e in Event)


def scrub_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Quoted text out of every value (a third-party message or a traceback included): it is where values hide."""
    for key, value in event_dict.items():
        if isinstance(value, str) and (key not in STRUCTURAL_KEYS or (key == "event" and value not in _EVENT_NAMES)):
            event_dict[key] = scrub(value)
    return event_dict


def _stdlib_handler(renderer: Any) -> logging.Handler:
    """stderr for the stdlib loggers, rendered by structlog like predictd's own lines."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_phi,
            structlog.processors.format_exc_info,
            scrub_values,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    return handler


def configure_logging(level: str = "INFO", json_output: bool = True) -> None:
    """Configure structlog (and the stdlib loggers of pynetdicom and friends) once per process."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_phi,
            structlog.processors.format_exc_info,
            scrub_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs whole datasets (patient names included) at DEBUG; keep it at WARNING whatever our level is.
    root = logging.getLogger()
    root.handlers = [_stdlib_handler(renderer)]
    root.setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # pydicom's "Invalid value for VR DA: '…'" becomes a scrubbed JSON line


def get_logger(component: str) -> Any:
    """A bound logger tagged with the component (receive, queue, classify, ...)."""
    # Lazy: modules create their logger at import, before configure_logging runs; bind() here would freeze defaults.
    return structlog.get_logger(component=component)
