"""One typed settings object: the example file documents every key, the environment beats the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from daemon.config import DicomDestination, Hl7Destination, Settings, StowDestination, load_settings
from tests.support import REPO

EXAMPLE = REPO / "deploy" / "predictd.example.toml"


def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= keys(annotation, f"{prefix}{name}.")
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
    expected |= {
        f"send.destinations.{k}"
        for model in (DicomDestination, StowDestination, Hl7Destination)
        for k in model.model_fields
    }
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
    with pytest.raises(ValidationError):
        load_settings(config)
