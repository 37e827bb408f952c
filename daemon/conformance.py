"""predictd's DICOM Conformance Statement (the layout of PS3.2 Annex A), rendered from the code's own lists.

``python -m predictd.daemon.conformance > docs/conformance-statement.md`` renders docs/conformance-statement.md, and
tests/unit/test_conformance.py fails when the two differ, so a SOP class, syntax, status, default or code changed in
the code cannot leave the statement behind. :data:`TEMPLATE` holds only what no list, default or docstring says.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import sys
from collections import ChainMap
from collections.abc import Iterable, Sequence
from typing import Any

import highdicom as hd
import pynetdicom
from pydantic import BaseModel
from pydicom.sr.coding import Code
from pydicom.uid import UID, ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from predictd.daemon import associations, audit, receive, tls
from predictd.daemon.config import ReceiveSettings, SpoolSettings
from predictd.daemon.config_base import ClientTls, ReceiveTls
from predictd.daemon.config_send import DicomDestination
from predictd.daemon.destinations import dicom
from predictd.daemon.listeners import supported_sop_classes
from predictd.reporting import codes, key_images, sr, uids

REGENERATE = "python -m predictd.daemon.conformance > docs/conformance-statement.md"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
SCU_SOP_CLASSES = (str(ComprehensiveSRStorage), str(SecondaryCaptureImageStorage))
"""What the send stage C-STOREs: the SR of reporting/sr.py and the key images of reporting/key_images.py."""
SR_SYNTAX = UID(str(inspect.signature(hd.sr.ComprehensiveSR).parameters["transfer_syntax_uid"].default))
"""The SR's transfer syntax: highdicom's default, since reporting/sr.py names none."""
RETRY_EXAMPLES = (0x0106, 0x0110, 0x0117, 0x0122, 0x0124, 0x0211, 0x0213, 0xA700, 0xA900, 0xC000, 0xC211)
"""Failure statuses a destination may answer, run through ``dicom._status_retryable`` for the SCU's table."""

_UNDOCUMENTED = {
    "receive.ae_title": "Our AE title: the called AE title callers must use, and by default our calling one",
    "receive.host": "Address to listen on (IPv4 or IPv6; `0.0.0.0` or `::` for all)",
    "receive.port": "Plain TCP port",
    "receive.max_pdu_size": "Maximum PDU length received (0: unlimited)",
    "receive.network_timeout_seconds": "DIMSE timeout: how long a started exchange waits for the peer",
    "receive.tls.private_key": "Our private key (PEM)",
    "receive.tls.min_version": "Lowest TLS version accepted",
    "dest.type": "`dicom`: C-STORE (the default type)",
    "dest.name": "Name in logs, the outbox and the audit trail",
    "dest.ae_title": "Called AE title of the peer",
    "dest.host": "Peer address",
    "dest.port": "Peer port (its TLS port with `tls`)",
    "dest.timeout_seconds": "Connection, ACSE, DIMSE and network timeout",
}
_SETTINGS = ((ReceiveSettings, "receive"), (ReceiveTls, "receive.tls"), (DicomDestination, "dest"))
"""Section 3.4's tables ("dest": ``[[send.destinations]]`` of type dicom); :data:`_UNDOCUMENTED` gives the meanings
of settings without an attribute docstring, and a new undocumented setting fails :func:`render`."""


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings under a class's attributes: pydantic and enums drop them at runtime, the source keeps them."""
    tree = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(tree, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(tree.body):
        target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[target.id] = " ".join(str(after.value.value).split())
    return docs


def _status_meanings() -> dict[int, str]:
    """The status table of daemon/receive.py's docstring, so each meaning is the receiver's own words."""
    rows = re.findall(r"^0x([0-9A-F]{4}) +(.*?)\n(?=\S)", receive.__doc__ or "", flags=re.M | re.S)
    return {int(code, 16): " ".join(text.split()) for code, text in rows}


def _key_image_attributes() -> dict[str, str]:
    """The fixed values ``key_images.build_key_image`` writes, read from its source rather than copied here."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(inspect.getsource(key_images.build_key_image))):
        if isinstance(node, ast.keyword) and node.arg in ("photometric_interpretation", "transfer_syntax_uid"):
            value: Any = vars(key_images)
            for part in ast.unparse(node.value).split("."):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            found[node.arg] = f"`{value}` ({value.name})" if isinstance(value, UID) else f"`{value.value}`"
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            name, value = node.targets[0].attr, node.value
            if isinstance(value, ast.IfExp):
                found[name] = f"`{ast.literal_eval(value.body)}` (else `{ast.literal_eval(value.orelse)}`)"
            elif isinstance(value, ast.Constant) and isinstance(value.value, str):
                found[name] = f"`{value.value}`" if value.value else "(empty)"
    return found


def _concepts() -> list[tuple[str, str, str, str]]:
    """Every coded concept reporting/codes.py defines at module level (constants and tables), one row per code."""
    rows: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    for name, value in vars(codes).items():
        items = [(f'{name}["{k}"]', v) for k, v in value.items()] if isinstance(value, dict) else [(name, value)]
        for where, concept in items:
            if isinstance(concept, hd.sr.CodedConcept | Code):
                row = (str(concept.value), str(concept.scheme_designator), str(concept.meaning), f"`{where}`")
                rows.setdefault(row[:2], row)
    return sorted(rows.values(), key=lambda row: (row[1], row[0]))


def _scu_contexts() -> list[tuple[str, str, str]]:
    """The presentation contexts ``dicom.store_file`` proposes for each document type (``;`` between contexts)."""
    sc_syntax = _key_image_attributes()["transfer_syntax_uid"].split("`")[1]
    plain = [str(dicom.ExplicitVRLittleEndian), str(dicom.ImplicitVRLittleEndian)]
    rows = [(*_uid(receive.VERIFICATION), [DEFAULT_TRANSFER_SYNTAXES])]
    for sop, syntax in zip(SCU_SOP_CLASSES, (str(SR_SYNTAX), sc_syntax), strict=True):
        rows.append((*_uid(sop), ([[syntax]] if syntax not in plain else []) + [plain]))
    return [(name, uid, "; ".join(" + ".join(f"`{u}`" for u in c) for c in cs)) for name, uid, cs in rows]


def _md(text: str) -> str:
    """reST roles of docstrings as Markdown code spans (``x`` already is one in both)."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; a ``|`` inside a cell is escaped so that it cannot split the cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(str(cell)).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _uid(uid: str) -> tuple[str, str]:
    """A UID as two table cells: its name in pydicom's dictionary, and itself."""
    return UID(uid).name, f"`{uid}`"


def _status(code: int) -> str:
    """A status's category and name in pynetdicom's Storage Service Class table (PS3.4 Annex B)."""
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Failure", "(not a C-STORE status)"))
    return f"{category}: {text}" if text else category


def _retry(status: int) -> str:
    """What the send stage does with a destination's C-STORE status: its own rules, called rather than restated."""
    delivered, retried = status in dicom.SUCCESS_STATUSES, dicom._status_retryable(status)
    return "delivered" if delivered else "retried later" if retried else "failed, not retried"


def _default(model: type[BaseModel], name: str) -> str:
    """A setting's default as written in TOML (JSON agrees for these scalars and lists)."""
    field = model.model_fields[name]
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    return "(required)" if field.is_required() else "(none)" if value is None else f"`{json.dumps(value, default=str)}`"


def _settings(model: type[BaseModel], prefix: str) -> str:
    """One settings table: every field of ``model``, so a new setting cannot be missing."""
    docs = _attribute_docs(model)
    key = prefix.replace("dest", "send.destinations[]")
    rows = [
        (f"`{key}.{n}`", _default(model, n), docs.get(n) or _UNDOCUMENTED[f"{prefix}.{n}"]) for n in model.model_fields
    ]
    return _table(("Key", "Default", "Meaning"), rows)


def _body(module: object) -> str:
    """A module docstring without its summary line, as Markdown."""
    return re.sub(r"^(.+)\n-+$", r"#### \1\n", _md(inspect.getdoc(module) or "").split("\n\n", 1)[1], flags=re.M)


TEMPLATE = """\
# predictd DICOM Conformance Statement

Generated from the code by `{REGENERATE}`; do not edit by hand.

## 1 Overview

predictd receives radiographs by C-STORE, classifies them with AI models and sends the result back to the PACS as a
Comprehensive SR, optionally with key images (Secondary Capture). No query, retrieve, worklist or media services.

{overview}

## 2 Introduction

**Audience**: PACS and modality integrators and whoever configures predictd. **Remarks**: every result predictd sends
is UNVERIFIED, preliminary AI output for a radiologist to review and sign (the SR's Verification Flag UNVERIFIED,
Completion Flag PARTIAL, Preliminary Flag PRELIMINARY; key images say so in their pixels). **Definitions**: AE
(Application Entity), SCU/SCP (Service Class User/Provider), SR (Structured Report), SC (Secondary Capture), TID/CID
(template/context group), PDU (protocol data unit), PHI (protected health information), BCP 195 (IETF TLS practice).

## 3 Networking

### 3.1 Implementation model

One application entity, `{r.ae_title}` by default (`receive.ae_title`), receives as a Storage SCP and, by default,
calls out with the same AE title. Each instance is written to the spool and recorded before success is answered. When
the sender releases the association (or the study has been quiet for a while) the study is classified; the report
stage builds the SR (and key images) and the send stage C-STOREs them to each DICOM destination, retrying until
delivered. They carry predictd's Device UID `{device_uid}`: forwarded back by a PACS, they are acknowledged and dropped.

### 3.2 AE specification

The SOP classes of section 1 as SCP. With `receive.unsupported_sop_classes = "ignore"` (default
`"{r.unsupported_sop_classes}"`) the {ignored} further storage SOP classes pynetdicom knows (7.4) are accepted too,
acknowledged with success and dropped; with `"refuse"` their presentation contexts are rejected.

| Association policy | Value |
|---|---|
| Application Context Name | `{context}` ({context.name}) |
| Maximum PDU size received | {r.max_pdu_size} (`receive.max_pdu_size`; 0: unlimited) |
| Associations at once, all callers | {r.max_associations} (`receive.max_associations`) |
| Associations at once, per calling AE title | {r.max_associations_per_ae} (`receive.max_associations_per_ae`) |
| Asynchronous operations | not supported (one operation at a time) |
| Implementation Class UID | `{pn.PYNETDICOM_IMPLEMENTATION_UID}` (pynetdicom) |
| Implementation Version Name | `{pn.PYNETDICOM_IMPLEMENTATION_VERSION}` |

The called AE title must be `receive.ae_title`. When `receive.allowed_calling_aets` is not empty the calling AE title
must be in it, and an entry may bind the title to hosts or networks; an empty list admits every caller (with a
warning at start). An association silent for `receive.idle_timeout_seconds` ({r.idle_timeout_seconds} s) is aborted;
a started DIMSE exchange waits at most `receive.network_timeout_seconds` ({r.network_timeout_seconds} s).

A-ASSOCIATE-RJ: result 1 permanent, 2 transient; source 1 service user, 3 service provider (presentation); reason 2
local limit exceeded, 3 calling AE title not recognised, 7 called AE title not recognised.

| Rejected when | Result | Source | Reason |
|---|---|---|---|
| the calling AE title is not in `allowed_calling_aets` (pynetdicom) | 1 | 1 | 3 |
| the called AE title is not `receive.ae_title` (pynetdicom) | 1 | 1 | 7 |
| `receive.max_associations` are open (pynetdicom) | 2 | 3 | 2 |
| the host is not allowed for the calling AE title | {a.PERMANENT} | {a.SERVICE_USER} | {a.CALLING_AE_NOT_RECOGNISED} |
| `receive.max_associations_per_ae` are open | {a.TRANSIENT} | {a.PRESENTATION} | {a.LOCAL_LIMIT_EXCEEDED} |

#### Presentation contexts accepted

Every storage SOP class above with these transfer syntaxes, role SCP, no extended negotiation; Verification with
pynetdicom's defaults (as in the SCU table below). The compressed syntaxes are those pydicom can decode with the pixel
decoders installed (`accepted_transfer_syntaxes()`): this list is generated with the project's pinned constraints
(constraints.txt). Of the syntaxes a caller proposes in one context, the first in this order is accepted.

{syntaxes}

#### SOP specific conformance: Storage SCP

Only the header is parsed (never the pixels); the file is written durably and recorded before success is answered.
Storage level 1 (Base): each image is kept as received (nothing coerced or removed), for processing only, and deleted
`spool.retention_days` (default {spool.retention_days}) after its study ended; images are not forwarded and cannot be
retrieved; digital signatures are kept, not verified. Every failure carries a fixed Error Comment (0000,0902):

{statuses}

#### Association initiation (SCU)

One association per document and `type = "dicom"` destination, released after the C-STORE, calling as the
destination's `calling_ae_title`, else `receive.ae_title`; key images (`report.key_images`) go before the SR that
references them; `predictd echo` and destination probes use Verification. Maximum PDU size received {scu_pdu}
(pynetdicom's default); timeouts: `timeout_seconds` ({DicomDestination.model_fields[timeout_seconds].default} s).
`destinations.dicom.store_file` proposes the file's own transfer syntax in a context of its own, then Explicit and
Implicit VR Little Endian together in another, and never transcodes: a JPEG key image fails at a peer that accepts
only the uncompressed context.

{scu_contexts}

A status in `SUCCESS_STATUSES` ends a delivery. {retryable} Other failures, no response, a lost connection and a
transient rejection are retried; a permanent rejection, an untrusted certificate or a refused context are not:

{retries}

### 3.3 Network interfaces

TCP/IP, IPv4 or IPv6: one listening address (`receive.host`), plain TCP on `receive.port` and/or DICOM TLS on
`receive.tls.port` (default {rt[port]}, DICOM's registered TLS port); `receive.plain = false` leaves only TLS.

**DICOM TLS**: the BCP 195 TLS Secure Transport Connection Profile (PS3.15 Annex B, RFC 9325): TLS {tls_versions}
at least (`min_version`, default {rt[min_version]}), no compression or renegotiation, TLS 1.2 cipher suites
`{tls.BCP195_CIPHERS}` (all TLS 1.3 suites). With `require_client_cert` (default
{rt[require_client_cert]}) a caller must present a certificate issued by `ca_bundle` (mutual TLS), whose name
goes into the audit trail; the handshake runs in the association's thread, the idle timeout its deadline. A
destination's `tls` table (`ca_bundle`, `certificate`, `private_key`, `check_hostname` (default
{ct[check_hostname]}), `min_version`) has its peer's certificate checked against `ca_bundle` (or the system
trust store) and host name; ours is presented when configured. Certificate files are read for each new connection.

### 3.4 Configuration

AE title `{r.ae_title}` and port {r.port} by default, set in the TOML config or as `PREDICTD_RECEIVE__AE_TITLE` and
`PREDICTD_RECEIVE__PORT`. The settings this statement depends on:

{settings}

## 4 Media interchange

Not supported.

## 5 Support of character sets

Received data sets are stored as received, in whatever character set; predictd reads only UIDs and a few header
attributes from them. The SR and key images get no Specific Character Set of predictd's choosing: highdicom copies
(0008,0005) from the first source image, and where that has none the default repertoire (ISO-IR 6) applies.

## 6 Security

DICOM TLS and the calling AE title and host allowlist as in 3.2 and 3.3. The audit trail (`audit_events`, append-only,
optionally also RFC 5424 syslog) records these events with AE titles, addresses, TLS names and UIDs, never a patient's
name, ID, birth date or accession number. Logs carry no PHI either: keys that could are redacted, and Error Comments
and refusal reasons name UIDs, keywords and byte offsets, never values.

{audit}

## 7 Annexes

### 7.1 SR content: Comprehensive SR, TID 1500 ({SR_SYNTAX.name})

{docs[sr]}

### 7.2 Coded concepts

Every concept `reporting/codes.py` defines at module level; per-task and per-label concepts are made at run time,
e.g. ({task.value}, {task.scheme_designator}, "{task.meaning}") for the task `hip_hardware`.

{concepts}

{scheme_item}

{docs[codes]}

### 7.3 Key images (Secondary Capture)

Series number {key_images.KEY_IMAGE_SERIES_NUMBER}, series description "{key_images.SERIES_DESCRIPTION}".

{docs[key_images]}

{sc_attributes}

### 7.4 Storage SOP classes accepted and dropped with `unsupported_sop_classes = "ignore"`

{ignored_classes}
"""


def render() -> str:
    """The whole statement as Markdown; deterministic (no dates, sorted where order means nothing)."""
    assert "specific_character_set" not in inspect.getsource(sr.build_sr), "section 5 says predictd sets none"
    image, result, meanings = receive.IMAGE_SOP_CLASSES, receive.RESULT_SOP_CLASSES, _status_meanings()
    classes = [(receive.VERIFICATION, "C-ECHO answered with success")] + [(u, "stored and classified") for u in image]
    classes += [(u, 'acknowledged and dropped (also under "refuse")') for u in result]
    scu, ignore = {receive.VERIFICATION, *SCU_SOP_CLASSES}, ReceiveSettings(unsupported_sop_classes="ignore")
    ignored = [u for u in supported_sop_classes(ignore) if u not in {*image, *result}]  # acknowledged and dropped
    statuses, kinds = [receive.SUCCESS, *receive.ERROR_COMMENTS], _attribute_docs(audit.AuditKind)
    fields = dict(
        r=ReceiveSettings(),
        a=associations,
        pn=pynetdicom,
        rt={name: _default(ReceiveTls, name) for name in ReceiveTls.model_fields},
        ct={name: _default(ClientTls, name) for name in ClientTls.model_fields},
        spool=SpoolSettings(),
        context=UID(APPLICATION_CONTEXT),
        task=codes.task_concept("hip_hardware"),
        device_uid=uids.device_uid(),
        ignored=len(ignored),
        overview=_table(
            ("SOP Class", "UID", "SCU", "SCP: handling"),
            [(*_uid(u), "Yes" if u in scu else "No", handling) for u, handling in classes],
        ),
        syntaxes=_table(("Transfer Syntax", "UID"), [_uid(u) for u in receive.accepted_transfer_syntaxes()]),
        statuses=_table(
            ("Status", "Name", "Error Comment", "Meaning (daemon/receive.py)"),
            [(f"`0x{s:04X}`", _status(s), receive.ERROR_COMMENTS.get(s, "(none)"), meanings[s]) for s in statuses],
        ),
        scu_pdu=AE().maximum_pdu_size,
        scu_contexts=_table(("SOP Class", "UID", "Transfer syntaxes proposed (`;` between contexts)"), _scu_contexts()),
        retryable=_md(inspect.getdoc(dicom._status_retryable) or ""),
        retries=_table(
            ("Status", "Name", "predictd"),
            [(f"`0x{s:04X}`", _status(s), _retry(s)) for s in sorted({*dicom.SUCCESS_STATUSES, *RETRY_EXAMPLES})],
        ),
        tls_versions=" or ".join(sorted(tls.MIN_VERSIONS)),
        settings="\n\n".join(_settings(model, prefix) for model, prefix in _SETTINGS),
        audit=_table(("Audit kind", "Recorded"), [(f"`{k.value}`", kinds[k.name]) for k in audit.AuditKind]),
        docs={"sr": _body(sr), "codes": _body(codes), "key_images": _body(key_images)},
        concepts=_table(("Code Value", "Coding Scheme", "Code Meaning", "In reporting/codes.py"), _concepts()),
        scheme_item=_table(("Identification", "Value"), [(e.name, e.value) for e in codes.coding_scheme_item()]),
        sc_attributes=_table(("Set by build_key_image", "Value"), sorted(_key_image_attributes().items())),
        ignored_classes=_table(("SOP Class", "UID"), sorted(_uid(u) for u in ignored)),
    )
    return TEMPLATE.format_map(ChainMap(fields, globals()))


def main() -> None:
    """Write the statement to stdout as UTF-8, whatever the locale."""
    sys.stdout.buffer.write(render().encode("utf-8"))


if __name__ == "__main__":
    main()
