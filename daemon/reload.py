"""SIGHUP: which changed settings a running daemon takes at once, and which wait for a restart.

Pure: compares two Settings objects. daemon.app applies the live ones (a new settings object for the stages, the
log level, the receiver's allowlist, a new engine for a changed model list) and logs the rest by name, so an
operator who edited the port sees "receive.port needs a restart" instead of a silent no-op.

Live: the log level and format, the destinations and every delivery setting read per attempt, the calling-AE
allowlist and per-caller cap, the report wording, key images and "not assessed" results, the retention period, the
queue's retry policy, and the enabled models. Everything else binds sockets, files, threads or timers at start-up
(ports, TLS files, the database, the spool, the worker count, the job intervals, the HTTP endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from predictd.daemon.config import Settings

LIVE = (
    "log.",
    "send.destinations",
    "send.give_up_after_hours",
    "send.max_attempts",
    "send.backoff_base_seconds",
    "send.backoff_cap_seconds",
    "receive.allowed_calling_aets",
    "receive.max_associations_per_ae",
    "report.",
    "spool.retention_days",
    "queue.quiet_seconds",
    "queue.quiet_seconds_by_modality",
    "queue.release_grace_seconds",
    "queue.max_attempts",
    "queue.backoff_base_seconds",
    "queue.backoff_cap_seconds",
    "models.enabled",
    "audit.",
)
"""Setting names (or prefixes ending in a dot) applied without a restart."""


@dataclass(frozen=True)
class Changes:
    live: list[str]
    """Changed settings applied now."""
    restart: list[str]
    """Changed settings that take effect at the next start."""

    @property
    def models(self) -> bool:
        return "models.enabled" in self.live


def changes(old: Settings, new: Settings) -> Changes:
    changed = _changed(old.model_dump(mode="json"), new.model_dump(mode="json"))
    live = [key for key in changed if _is_live(key)]
    return Changes(live=live, restart=[key for key in changed if key not in live])


def merged(old: Settings, new: Settings, live: list[str]) -> Settings:
    """``old`` with the fields that hold ``live`` changes taken from ``new``: what a reloaded daemon runs with (the
    rest keeps its start-up value, so the next reload names it again until a restart)."""
    fields: dict[str, set[str]] = {}
    for key in live:
        section, _, rest = key.partition(".")
        fields.setdefault(section, set()).add(rest.partition(".")[0])
    update = {
        section: getattr(old, section).model_copy(update={name: getattr(getattr(new, section), name) for name in names})
        for section, names in fields.items()
    }
    return old.model_copy(update=update)


def _is_live(key: str) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in LIVE)


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves (or lists, as a whole) that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []
