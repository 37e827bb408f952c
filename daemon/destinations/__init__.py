"""The ways out: one handler module per destination type, and the table the send stage looks a type's handler up in.

``HANDLERS`` is keyed by the destination's ``type``: the config's (``"dicom"``, ``"stow"``, ``"hl7"``, see
:data:`daemon.config.Destination`) and ``"folder"``, the outbox folder used when none is configured. A unit test
holds the keys equal to the config's types plus the folder, so a new type cannot be configured without a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from predictd.daemon.config_send import DicomDestination, Hl7Destination, StowDestination
from predictd.daemon.destinations import dicom, folder, hl7, stow
from predictd.daemon.destinations.base import Handler, Parcel, SendError
from predictd.daemon.destinations.folder import FolderDestination

HANDLERS: Mapping[str, Handler[Any]] = MappingProxyType(
    {
        "dicom": Handler(DicomDestination, dicom.deliver),
        "stow": Handler(StowDestination, stow.deliver),
        "hl7": Handler(Hl7Destination, hl7.deliver),
        "folder": Handler(FolderDestination, folder.deliver),
    }
)

__all__ = ["HANDLERS", "FolderDestination", "Handler", "Parcel", "SendError"]
