"""One typed settings object: the example file documents every key, the environment beats the file."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from predictd.daemon.config import ConfigError, Settings, load_settings
from predictd.daemon.config_send import DicomDestination, Hl7Destination, StowDestination
from tests.support import REPO

EXAMPLE = REPO / "deploy" / "predictd.example.toml"


def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        candidates = (*typing.get_args(field.annotation), field.annotation)
        tables = [t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)]
        if tables:  # a table, or an optional one (receive.tls)
            out |= keys(tables[0], f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    documented = set()
    section = ""
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if m := re.match(r"^\[+([a-z_.]+)\]+", stripped):
            section = m.group(1)
        elif m := re.match(r"^([a-z_]+)\s*=", stripped):
            documented.add(f"{section}.{m.group(1)}")
    expected = keys(Settings) - {"send.destinations"}
    destination_types = (DicomDestination, StowDestination, Hl7Destination)
    expected |= {f"send.destinations.{k}" for model in destination_types for k in keys(model)}
    assert expected <= documented, sorted(expected - documented)
    load_settings(EXAMPLE)  # and it parses


def test_environment_beats_the_file_and_paths_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "p.toml"
    config.parent.mkdir()
    config.write_text('[receive]\nport = 104\n[spool]\ndir = "spool"\n[database]\nurl = "sqlite:///q.db"\n')
    monkeypatch.setenv("PREDICTD_RECEIVE__PORT", "11113")
    settings = load_settings(config)
    assert settings.receive.port == 11113
    assert settings.spool.dir == config.parent / "spool"
    assert settings.database.url == f"sqlite:///{config.parent / 'q.db'}"


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text("[recieve]\nport = 1\n")
    with pytest.raises(ConfigError, match=re.escape("unknown key 'recieve'; did you mean 'receive'?")):
        load_settings(config)


def test_a_typo_in_a_section_is_an_error_naming_the_key(tmp_path: Path) -> None:
    """`alowed_calling_aets` must not load as an empty allowlist (that turns the AE check off)."""
    config = tmp_path / "p.toml"
    config.write_text('[receive]\nalowed_calling_aets = ["MODALITY1"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "receive.alowed_calling_aets" in message and "did you mean 'allowed_calling_aets'" in message
    assert "MODALITY1" not in message and "\n" not in message


def test_a_typo_in_a_destination_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text('[[send.destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
                      'timeout_secs = 5\n')  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape("unknown key 'send.destinations.0.dicom.timeout_secs'")):
        load_settings(config)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[receive.tls]\ncertificate = "c.pem"\nprivate_key = "k.pem"\nca_bundle = "ca.pem"\n'
            "require_client_certs = 1\n",
            "unknown key 'receive.tls.require_client_certs'; did you mean 'require_client_cert'?",
        ),
        ("[http]\nprot = 9112\n", "unknown key 'http.prot'; did you mean 'port'?"),
        (
            '[audit.syslog]\nhost = "h"\nprotocl = "tcp"\n',
            "unknown key 'audit.syslog.protocl'; did you mean 'protocol'?",
        ),
        (
            '[[send.destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n'
            '[send.destinations.tls]\ncabundle = "x"\n',
            "unknown key 'send.destinations.0.dicom.tls.cabundle'",
        ),
        ("[receive]\nplain = false\n", "plain = false needs a [receive.tls] table"),
        ('[receive.tls]\ncertificate = "c.pem"\nprivate_key = "k.pem"\n', "require_client_cert needs ca_bundle"),
        (
            '[[send.destinations]]\ntype = "stow"\nname = "w"\nurl = "http://x"\n[send.destinations.tls]\n',
            "tls is set, so url must start with https://",
        ),
    ],
)
def test_a_typo_or_contradiction_in_the_tls_http_and_audit_tables_is_named(
    tmp_path: Path, toml: str, expected: str
) -> None:
    config = tmp_path / "p.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_settings(config)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PREDICTD_RECEIVE__ALOWED_CALLING_AETS", "did you mean 'allowed_calling_aets'"),
        ("PREDICTD_RECIEVE__PORT", "unknown setting PREDICTD_RECIEVE__PORT; did you mean PREDICTD_RECEIVE?"),
    ],
)
def test_a_typo_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str, expected: str) -> None:
    monkeypatch.setenv(name, '["MODALITY1"]')
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_settings(None)
    assert "MODALITY1" not in str(caught.value)


def test_the_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "p.toml"
    config.write_text("[queue]\nquiet_second = 2\n")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("predictd")), "--config", str(config), "queue", "ls"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {config}: unknown key 'queue.quiet_second'; did you mean 'quiet_seconds'? "
        "(also checked: PREDICTD_ environment variables)"
    ]


def test_the_daemon_never_decodes_in_its_own_process(tmp_path: Path) -> None:
    """A codec that crashes natively must kill a decode process, not the daemon: at least one decode worker."""
    assert Settings().models.decode_workers >= 1
    config = tmp_path / "p.toml"
    config.write_text("[models]\ndecode_workers = 0\n")
    with pytest.raises(ConfigError, match=r"models\.decode_workers"):
        load_settings(config)
