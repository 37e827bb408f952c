"""structlog set-up, the fixed event names, and PHI redaction.

Every log line is JSON with a fixed ``event`` name, so operators can alert on names rather than on prose.
Patient names, IDs and birth dates never reach a log: a processor drops any key that could carry them, and
callers pass only UIDs, AE titles, states and reasons.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from enum import StrEnum
from typing import Any

import structlog


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs whole datasets (patient names included) at DEBUG; keep it at WARNING whatever our level is.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def get_logger(component: str) -> Any:
    """A bound logger tagged with the component (receive, queue, classify, ...)."""
    # Lazy: modules create their logger at import, before configure_logging runs; bind() here would freeze defaults.
    return structlog.get_logger(component=component)
