"""One typed Settings object: a TOML file plus PREDICTD_ environment overrides.

Loaded once by the CLI and passed down; no module reads configuration on its own.
Environment variables use a double underscore for nesting, e.g. ``PREDICTD_DATABASE__URL``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from predictd.daemon.config_base import ClientTls, ConfigError, ReceiveTls, Section
from predictd.daemon.config_send import SendSettings

__all__ = ["ConfigError", "Section", "Settings", "load_settings"]


class AllowedCaller(Section):
    """A calling AE title and, optionally, the hosts or networks it may call from: an AE title alone is a password
    anyone on the network can read."""

    ae: str
    hosts: list[IPvAnyNetwork] = Field(default_factory=list)
    """Addresses or networks (``10.1.2.0/24``, ``10.1.2.7``); empty: any host."""


class ReceiveSettings(Section):
    """The DICOM Storage SCP that modalities and the PACS send to."""

    ae_title: str = "PREDICTD"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: list[str | AllowedCaller] = Field(default_factory=list)
    """Calling AE titles allowed to associate (a title, or ``{ ae = "M1", hosts = ["10.1.2.0/24"] }``); empty allows
    every caller (a warning is logged at start-up)."""
    max_associations: int = Field(default=50, ge=1)
    """Associations served at once, all callers together (pynetdicom's default of 10 lets nine idle ones lock a
    modality out)."""
    max_associations_per_ae: int = Field(default=10, ge=1)
    """Associations one calling AE title may hold at once; more are rejected (transient, local limit exceeded)."""
    idle_timeout_seconds: float = Field(default=15.0, gt=0)
    """An association that sends nothing this long (no A-ASSOCIATE-RQ after connecting, no PDU in between) is
    aborted."""
    unsupported_sop_classes: Literal["refuse", "ignore"] = "refuse"
    """Other SOP classes (CT, MR ...): refused at negotiation, or accepted and discarded. SRs and presentation
    states are always accepted and discarded (a PACS forwarding whole studies sends predictd's own SR back)."""
    min_free_bytes: int = 1_000_000_000
    """Below this much free space in the spool, C-STORE answers 0xA700 (out of resources)."""
    max_pdu_size: int = 0
    network_timeout_seconds: float = 60.0
    plain: bool = True
    """Listen on ``port`` without TLS; false: only the TLS listener of ``[receive.tls]``."""
    tls: ReceiveTls | None = None
    """A DICOM TLS listener on ``tls.port`` (beside the plain one unless ``plain = false``)."""

    @model_validator(mode="after")
    def _some_listener(self) -> Self:
        if not self.plain and self.tls is None:
            raise ValueError("plain = false needs a [receive.tls] table: predictd would listen nowhere")
        return self


class SpoolSettings(Section):
    """Where received images and built documents live on disk."""

    dir: Path = Path("var/spool")
    retention_days: float = 30.0
    """Files of studies that ended (done, skipped, cancelled) longer ago than this are purged."""


class DatabaseSettings(Section):
    url: str = "sqlite:///var/predictd.db"
    sqlite_busy_timeout_ms: int = 30_000


class QueueSettings(Section):
    """When a study is ready, how long a claim lasts, how failures retry."""

    quiet_seconds: float = 10.0
    quiet_seconds_by_modality: dict[str, float] = Field(default_factory=dict)
    complete_on_release: bool = True
    """A study is complete ``release_grace_seconds`` after the association that brought it is released normally (when
    no other open association brought any of it), instead of after the quiet window; the quiet window stays the
    fallback (aborted associations, senders that split a study). False: always wait the quiet window."""
    release_grace_seconds: float = Field(default=1.0, ge=0)
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 20.0
    max_attempts: int = 5
    backoff_base_seconds: float = 5.0
    backoff_cap_seconds: float = 600.0
    sweep_seconds: float = 1.0
    """How often the readiness sweep and the lease reaper run."""
    purge_hours: float = 6.0


class WorkerSettings(Section):
    count: int = 1
    poll_seconds: float = 5.0
    """The safety net: stages, the sweep and (on PostgreSQL) other processes wake idle workers at once (daemon.wakeup);
    a worker also looks for work this often."""
    batch_studies: int = 8
    """Ready studies a worker classifies in one engine call, so a GPU batch spans studies; 1 = one at a time."""
    name: str | None = None
    """Prefix of the claim owner written into the queue; defaults to host:pid."""


class ModelSettings(Section):
    dir: Path = Path("var/models")
    enabled: list[str] = Field(default_factory=list)
    """Model directories under ``dir`` to load; empty loads every card found there."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 16
    decode_workers: int = Field(default=1, ge=1)
    """Processes that decode and preprocess images (at least one: a codec that crashes natively on a hostile file
    kills a decode process, never the daemon); on a GPU host give them most of the cores."""
    torch_threads: int = Field(default=0, ge=0)
    """torch's threads for the forward on CPU; 0: every CPU the process may use (the decode processes are idle while
    a study's forward runs). Lower it where decoding dominates (many large compressed images per study)."""
    compile: bool = False
    """torch.compile each model: slower start, faster forward on a GPU."""
    channels_last: bool = True
    """Weights and inputs in channels-last memory layout: on CPU too, where oneDNN's convolutions run faster in it
    (the shipped ensemble 1.9x, EfficientNet-B0 1.3x; python -m bench.channels_last); outputs are the same."""


class ReportSettings(Section):
    manufacturer: str = "predictd"
    institution_name: str | None = None
    series_description: str = "predictd AI result (unverified)"
    key_images: bool = False
    """Grad-CAM overlays as Secondary Capture images in a new series of the study, referenced from the SR."""
    templates: dict[str, str] = Field(default_factory=dict)
    """Jinja2 templates that change the report wording: keys "line" (one region and side) and "document"."""
    send_not_assessed: bool = True
    """A study no model applies to gets a short SR and report text saying which models were considered and why none
    applied (the reading room sees an answer, not silence); off: it ends "skipped" with nothing sent."""

    @field_validator("templates")
    @classmethod
    def _templates_render(cls, value: dict[str, str]) -> dict[str, str]:
        from predictd.reporting.text import check_templates  # Jinja2 and the card model: only when templates are set

        check_templates(value)
        return value


class HttpSettings(Section):
    """``[http]``: /healthz, /readyz and Prometheus /metrics, served by ``predictd serve`` (daemon/http.py)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    """0: no HTTP endpoint."""


class SyslogSettings(Section):
    """``[audit.syslog]``: each audit record also goes to a collector as an RFC 5424 message."""

    host: str
    port: int = 514
    protocol: Literal["udp", "tcp", "tls"] = "udp"
    """udp (RFC 5426), tcp with octet counting (RFC 6587), or tls (RFC 5425, port 6514 by convention)."""
    tls: ClientTls | None = None
    """With ``protocol = "tls"``: the collector's CA and, if it asks, our client certificate."""
    app_name: str = "predictd"
    timeout_seconds: float = 5.0


class AuditSettings(Section):
    """``[audit]``: the append-only audit trail (daemon/audit.py) is always kept in the database; optionally copied
    to syslog."""

    syslog: SyslogSettings | None = None


class LogSettings(Section):
    level: str = "INFO"
    json_output: bool = True


class Settings(BaseSettings):
    """Every setting of a predictd process. See deploy/predictd.example.toml for documentation."""

    model_config = SettingsConfigDict(env_prefix="PREDICTD_", env_nested_delimiter="__", extra="forbid")

    receive: ReceiveSettings = Field(default_factory=ReceiveSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: the file's values come in as init arguments, env overrides them.
        return env_settings, init_settings


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply environment overrides, and resolve relative paths.

    Relative paths in a file are taken relative to the file's folder, so a config works wherever it is started from.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        base = path.resolve().parent
    data.update(overrides)
    _check_environment(os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, path)) from None
    _absolute_paths(settings, base)
    settings.database.url = _absolute_sqlite_url(settings.database.url, base)
    return settings


def _absolute_paths(section: BaseModel, base: Path) -> None:
    """Every Path setting, in every table and list of tables (certificates of destinations too), made absolute."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path):
            setattr(section, name, value if value.is_absolute() else (base / value).resolve())
        elif isinstance(value, BaseModel):
            _absolute_paths(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    _absolute_paths(item, base)


def _absolute_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == "sqlite:///:memory:":
        return url
    rest = url[len(prefix) :]
    if rest.startswith("/"):
        return url
    return prefix + str((base / rest).resolve())


def describe(exc: ValidationError, path: Path | None = None) -> str:
    """The first problem of ``exc`` as one line: where (file or environment), which key, and for an unknown key the
    known one it most resembles. Values are never quoted: a config may hold passwords."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    source = f"{path}" if path is not None else "the settings"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        hint = _suggestion(first["loc"])
        return f"{source}: unknown key {where!r}{hint} (also checked: PREDICTD_ environment variables){more}"
    return f"{source}: {where}: {first['msg']}{more}"


NOT_SETTINGS = frozenset({"PREDICTD_CONFIG", "PREDICTD_TEST_POSTGRES_URL", "PREDICTD_TEST_SHARED"})
"""PREDICTD_ variables that are not settings: the CLI's --config, the test suite's PostgreSQL URL and shared folder."""


def _check_environment(environ: Mapping[str, str]) -> None:
    """pydantic-settings ignores a PREDICTD_ variable whose section does not exist (PREDICTD_RECIEVE__PORT)."""
    for name in environ:
        upper = name.upper()
        if not upper.startswith("PREDICTD_") or upper in NOT_SETTINGS:
            continue
        section = upper.removeprefix("PREDICTD_").split("__")[0].lower()
        if section not in Settings.model_fields:
            close = difflib.get_close_matches(section, list(Settings.model_fields), n=1)
            hint = f"; did you mean PREDICTD_{close[0].upper()}?" if close else ""
            raise ConfigError(f"environment: unknown setting {name}{hint}")


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """ "; did you mean 'x'?" for the known key of that table closest to the unknown one, or ""."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        candidates = (*typing.get_args(annotation), annotation)
        tables = [t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)]
        if not tables:
            return ""  # e.g. inside a destination list: the message still names the key
        model = tables[0]  # a table, or the table of an optional one (``tls: ReceiveTls | None``)
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
