"""Deterministic UIDs for the documents predictd sends.

Why deterministic: a run may be reported twice (a crash between building and sending, a retried send, an operator
re-queueing the study). If each attempt minted a fresh random UID, the PACS would end up holding two SRs for one run.
Deriving the UIDs from what identifies the run (study, run number, model versions) makes a retry produce the *same*
SOP Instance UID, which the PACS treats as the same object.

Every UID here is ``2.25.<integer>``: the integer is a UUID (RFC 9562 version 8, "custom") whose 122 free bits come from
SHA-256 over a predictd namespace and the inputs. The ``2.25`` root is defined (ISO/IEC 9834-8, DICOM PS3.5 B.2) for
UUID-derived UIDs, so no organisational root has to be registered. The result is at most 44 characters, well under
the 64-character limit of the UI value representation, and never has a leading zero in a component.
"""

from __future__ import annotations

import hashlib
import json

_NAMESPACE = "predictd.uids.v1"
"""Bumping this (never done lightly) would change every derived UID."""


def derived_uid(kind: str, *parts: str | int) -> str:
    """A ``2.25.`` UID that is a pure function of ``kind`` and ``parts``.

    The inputs are JSON-encoded as a list so that ("a.b", "c") and ("a", "b.c") cannot collide.
    """
    payload = json.dumps([_NAMESPACE, kind, *parts], separators=(",", ":"), ensure_ascii=True)
    digest = bytearray(hashlib.sha256(payload.encode("ascii")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # UUID version 8 (custom)
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{int.from_bytes(digest, 'big')}"


def sr_instance_uid(study_uid: str, run_no: int, model_versions: str) -> str:
    """SOP Instance UID of the SR for one run of one study with the given model versions."""
    return derived_uid("sr-instance", study_uid, int(run_no), model_versions)


def sr_series_uid(study_uid: str) -> str:
    """Series Instance UID shared by every predictd SR of a study, so they group as one series in the PACS."""
    return derived_uid("sr-series", study_uid)


def device_uid() -> str:
    """predictd's Device Observer UID (TID 1004): the same on every host, so the PACS sees one device."""
    return derived_uid("device", "predictd")


def tracking_uid(sr_uid: str, key: str) -> str:
    """Tracking Unique Identifier of one measurement group of an SR; stable across rebuilds of that SR."""
    return derived_uid("tracking", sr_uid, key)


def key_image_series_uid(study_uid: str) -> str:
    """Series Instance UID shared by every predictd key image (Grad-CAM overlay) of a study, apart from the SRs."""
    return derived_uid("key-image-series", study_uid)


def key_image_uid(sr_uid: str, key: str) -> str:
    """SOP Instance UID of the key image explaining one finding of an SR; a retried run rebuilds the same UID.

    ``key`` is the finding's key (:func:`finding_key`); the SR UID already stands for study, run and model versions.
    """
    return derived_uid("key-image", sr_uid, key)


def finding_key(model: str, sop_instance_uid: str, side: str | None, region: str | None = None) -> str:
    """What identifies one finding within a run: model (name@version), image, patient side and image half.

    The region is only appended when there is one, so keys (and the tracking UIDs derived from them) of whole-image
    findings are the same as before regions existed; it tells apart the two halves of one image read with no side.
    """
    key = f"{model}|{sop_instance_uid}|{side or '-'}"
    return f"{key}|{region}" if region else key
