"""What every config table shares: :class:`Section` (unknown keys refused), :class:`ConfigError`, and the TLS tables
of the receiver and of the destinations (daemon/config.py and daemon/config_send.py both use them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConfigError(ValueError):
    """A config file or PREDICTD_ variable that does not load: one line naming the key (never its value)."""


class Section(BaseModel):
    """A config table: an unknown key is an error, not a silently ignored typo (``alowed_calling_aets`` would
    otherwise load as an empty allowlist and turn the AE check off)."""

    model_config = ConfigDict(extra="forbid")


TlsVersion = Literal["1.2", "1.3"]


class ReceiveTls(Section):
    """``[receive.tls]``: a DICOM TLS listener (BCP 195), beside the plain port or instead of it (``plain = false``)."""

    port: int = Field(default=2762, ge=0, le=65535)
    """2762 is DICOM's registered port for TLS; 0 picks a free port (tests)."""
    certificate: Path
    """Our certificate (PEM), followed by any intermediates."""
    private_key: Path
    ca_bundle: Path | None = None
    """The CAs (PEM) whose certificates callers may present; needed when ``require_client_cert``."""
    require_client_cert: bool = True
    """Mutual TLS: a caller without a certificate from ``ca_bundle`` is refused in the handshake."""
    min_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _client_certs_need_cas(self) -> Self:
        if self.require_client_cert and self.ca_bundle is None:
            raise ValueError("require_client_cert needs ca_bundle (the CAs that issue the callers' certificates)")
        return self


class ClientTls(Section):
    """A destination's ``tls`` table: connect with TLS, check the server's certificate, present ours if asked."""

    ca_bundle: Path | None = None
    """CAs (PEM) that issue the server's certificate; absent: the system's trust store."""
    certificate: Path | None = None
    """Our client certificate (PEM) for servers that require mutual TLS; with ``private_key``."""
    private_key: Path | None = None
    check_hostname: bool = True
    """The server's certificate must name the host we connect to (turn off only for a certificate issued to another
    name by a CA in ``ca_bundle``)."""
    min_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _certificate_with_key(self) -> Self:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self
