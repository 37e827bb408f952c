"""daemon.destinations.HANDLERS: one handler for every destination type the config accepts, and for the folder."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from predictd.daemon.config_send import Destination, DicomDestination, SendSettings
from predictd.daemon.destinations import HANDLERS, FolderDestination, Parcel


def _config_types() -> dict[str, type]:
    """``{type string: settings class}`` for each member of the config's Destination union (Annotated[..., Tag])."""
    union, _discriminator = typing.get_args(Destination)
    types: dict[str, type] = {}
    for member in typing.get_args(union):
        cls, tag = typing.get_args(member)
        (literal,) = typing.get_args(cls.model_fields["type"].annotation)
        assert literal == tag.tag, f"{cls.__name__}.type is {literal!r} but its union tag is {tag.tag!r}"
        types[literal] = cls
    return types


def test_every_configurable_destination_type_has_a_handler_for_its_settings_class() -> None:
    types = _config_types()
    assert types, "no destination types found in daemon.config.Destination"
    assert set(HANDLERS) == set(types) | {"folder"}
    for name, cls in types.items():
        assert HANDLERS[name].settings is cls, name
    assert HANDLERS["folder"].settings is FolderDestination
    assert FolderDestination("outbox-folder", Path("outbox")).type == "folder"


@pytest.mark.parametrize(
    "table",
    [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
        {"type": "stow", "name": "web", "url": "http://127.0.0.1:8042/dicom-web"},
        {"type": "hl7", "name": "ris", "host": "127.0.0.1", "port": 2575},
    ],
)
def test_a_parsed_destination_finds_its_handler_by_type(table: dict[str, object]) -> None:
    (dest,) = SendSettings.model_validate({"destinations": [table]}).destinations
    assert isinstance(dest, HANDLERS[dest.type].settings)


def test_a_handler_refuses_another_types_settings() -> None:
    parcel = Parcel(Path("sr.dcm"), "1.2.3", "1.2", "PREDICTD")
    with pytest.raises(TypeError, match="DicomDestination is not a FolderDestination"):
        HANDLERS["folder"].send(parcel, DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104))
