"""Registry rows → a FHIR R5 Bundle (fhir.resources 8 models FHIR R5 5.0.0): pure, no I/O, no clock.

Built only from fhir.resources classes, so the bundle is validated as it is constructed. Shape:

* Bundle, type "collection";
* one DiagnosticReport per study (status "preliminary"): identifier = the Study Instance UID (system
  ``urn:dicom:uid``, value ``urn:oid:<uid>``, the DICOM convention) and, when known, the accession number (type ACSN);
  ``study`` = the ImagingStudy by that identifier; ``subject`` = the Patient by identifier (the DICOM Patient ID; no
  issuer is stored, so no system); ``result`` = its Observations; a one-line AI-disclaimer ``conclusion``;
* one Observation per finding (status "preliminary"): ``code`` = the model task, ``valueCodeableConcept`` = the label,
  a ``component`` holding the probability as a ``valueQuantity`` (UCUM unit "1"), ``bodySite`` = laterality, and
  ``device`` naming the model as "name@version". A finding the model's domain gate refused ("not_assessed") has no
  value and no probability: ``dataAbsentReason`` "not-applicable" with the reason as its text.

Codes: tasks and labels are not in any public terminology, so they use predictd-local URIs (:data:`TASK_SYSTEM`,
``urn:predictd:label:<task>``); no code is invented in a public system. The public codes used are SNOMED CT 24028007
(Right) and 7771000 (Left) for laterality only, HL7 v2-0074 "RAD", v2-0203 "ACSN", observation-category "imaging" and
UCUM "1". Resource ids are UUIDv5 of (study UID, run, finding), so the same rows always give the same bundle.

Rows are mappings as daemon/registry.py makes them (reporting may not import the daemon): the key columns
(patient_id, accession_number, study_date, study_uid, run_no, classified_at, side) and, for each finding column ``c``
(any key with a ``c_task`` companion), ``c``, ``c_probability``, ``c_task``, ``c_model`` and ``c_side``. A finding
shared by several side rows of a study (an unsided one, ``c_side`` "") becomes one Observation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fhir.resources.bundle import Bundle, BundleEntry
from fhir.resources.codeableconcept import CodeableConcept
from fhir.resources.coding import Coding
from fhir.resources.diagnosticreport import DiagnosticReport
from fhir.resources.identifier import Identifier
from fhir.resources.observation import Observation, ObservationComponent
from fhir.resources.quantity import Quantity
from fhir.resources.reference import Reference

from predictd.models.prediction import Prediction

TASK_SYSTEM = "urn:predictd:task"
"""Local CodeSystem for model tasks (Observation.code); a task's labels use ``urn:predictd:label:<task>``."""
MEASURE_SYSTEM = "urn:predictd:measure"
REPORT_SYSTEM = "urn:predictd:report"
SNOMED = "http://snomed.info/sct"
LATERALITY = {"R": ("24028007", "Right"), "L": ("7771000", "Left")}
DICOM_UID_SYSTEM = "urn:dicom:uid"
CONCLUSION = "AI-generated preliminary classification (predictd); not verified by a radiologist."
_NAMESPACE = uuid.UUID("5f0c7a52-0f3e-4c1a-9a43-2d1f6c0e9b7d")
"""Fixed namespace of the bundle's UUIDv5 resource ids (any constant would do; it must never change)."""


def label_system(task: str) -> str:
    return f"urn:predictd:label:{task}"


def bundle(rows: Iterable[Mapping[str, Any]]) -> Bundle:
    """The Bundle for ``rows``: studies in order of first appearance, each report followed by its Observations."""
    studies: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        studies.setdefault((row["study_uid"], int(row["run_no"])), []).append(row)
    entries: list[BundleEntry] = []
    for study_rows in studies.values():
        entries.extend(_study_entries(study_rows))
    return Bundle(type="collection", entry=entries or None)


def bundle_json(rows: Iterable[Mapping[str, Any]]) -> str:
    """:func:`bundle` as FHIR JSON."""
    return bundle(rows).model_dump_json(indent=2)


def _study_entries(rows: list[Mapping[str, Any]]) -> list[BundleEntry]:
    first = rows[0]
    study_uid, run_no = first["study_uid"], int(first["run_no"])
    subject = _patient(first.get("patient_id"))
    effective = _date(first.get("study_date"))
    issued = first["classified_at"]
    observations: dict[tuple[str, str], Observation] = {}
    for row in rows:
        for column in _finding_columns(row):
            if row.get(column) is None:
                continue
            side = row.get(f"{column}_side") or ""
            key = (column, side)
            if key not in observations:
                observations[key] = _observation(
                    row, column, side, _id(study_uid, run_no, column, side), subject, effective, issued
                )
    report = DiagnosticReport(
        id=_id(study_uid, run_no, "report"),
        status="preliminary",
        category=[
            CodeableConcept(
                coding=[Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="RAD", display="Radiology")]
            )
        ],
        code=CodeableConcept(
            coding=[Coding(system=REPORT_SYSTEM, code="classification", display="predictd AI classification")],
            text="predictd AI classification",
        ),
        identifier=_study_identifiers(study_uid, first.get("accession_number")),
        study=[Reference(type="ImagingStudy", identifier=_uid_identifier(study_uid))],
        subject=subject,
        effectiveDateTime=effective,
        issued=issued,
        result=[Reference(reference=f"urn:uuid:{o.id}") for o in observations.values()] or None,
        conclusion=CONCLUSION,
    )
    return [_entry(report), *(_entry(o) for o in observations.values())]


def _finding_columns(row: Mapping[str, Any]) -> list[str]:
    return [key for key in row if f"{key}_task" in row]


def _observation(
    row: Mapping[str, Any],
    column: str,
    side: str,
    obs_id: str,
    subject: Reference | None,
    effective: Any,
    issued: datetime,
) -> Observation:
    task, label = str(row[f"{column}_task"]), str(row[column])
    probability = row[f"{column}_probability"]
    not_assessed = label == Prediction.NOT_ASSESSED
    return Observation(
        id=obs_id,
        status="preliminary",
        category=[
            CodeableConcept(
                coding=[
                    Coding(
                        system="http://terminology.hl7.org/CodeSystem/observation-category",
                        code="imaging",
                        display="Imaging",
                    )
                ]
            )
        ],
        code=CodeableConcept(coding=[Coding(system=TASK_SYSTEM, code=task, display=task)], text=column),
        subject=subject,
        effectiveDateTime=effective,
        issued=issued,
        valueCodeableConcept=None
        if not_assessed
        else CodeableConcept(coding=[Coding(system=label_system(task), code=label, display=label)]),
        dataAbsentReason=_NOT_APPLICABLE if not_assessed else None,
        component=None
        if probability is None
        else [
            ObservationComponent(
                code=CodeableConcept(
                    coding=[Coding(system=MEASURE_SYSTEM, code="probability", display="Calibrated model probability")]
                ),
                valueQuantity=Quantity(
                    value=Decimal(str(round(float(probability), 6))),
                    unit="1",
                    system="http://unitsofmeasure.org",
                    code="1",
                ),
            )
        ],
        bodySite=_laterality(side),
        device=Reference(display=str(row[f"{column}_model"])),
    )


_NOT_APPLICABLE = CodeableConcept(
    coding=[
        Coding(
            system="http://terminology.hl7.org/CodeSystem/data-absent-reason",
            code="not-applicable",
            display="Not Applicable",
        )
    ],
    text=Prediction.NOT_ASSESSED_REASON,
)
"""Why a finding has no value: the model's domain gate refused the image (FHIR's data-absent-reason code system)."""


def _laterality(side: str) -> CodeableConcept | None:
    if side not in LATERALITY:
        return None
    code, display = LATERALITY[side]
    return CodeableConcept(coding=[Coding(system=SNOMED, code=code, display=display)], text=display)


def _patient(patient_id: str | None) -> Reference | None:
    if not patient_id:
        return None
    return Reference(type="Patient", identifier=Identifier(value=patient_id))


def _uid_identifier(uid: str) -> Identifier:
    return Identifier(system=DICOM_UID_SYSTEM, value=f"urn:oid:{uid}")


def _study_identifiers(study_uid: str, accession: str | None) -> list[Identifier]:
    identifiers = [_uid_identifier(study_uid)]
    if accession:
        acsn = CodeableConcept(
            coding=[Coding(system="http://terminology.hl7.org/CodeSystem/v2-0203", code="ACSN", display="Accession ID")]
        )
        identifiers.append(Identifier(type=acsn, value=accession))
    return identifiers


def _date(value: object) -> Any:
    """A study date (date, or ISO string) as a FHIR date string; anything else → None.

    Typed Any because fhir.resources annotates dateTime as ``datetime``, while FHIR (and its validator) take a date."""
    if isinstance(value, date):
        return value.isoformat()[:10]
    return value if isinstance(value, str) and value else None


def _id(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


def _entry(resource: DiagnosticReport | Observation) -> BundleEntry:
    return BundleEntry(fullUrl=f"urn:uuid:{resource.id}", resource=resource)


__all__ = ["CONCLUSION", "LATERALITY", "TASK_SYSTEM", "bundle", "bundle_json", "label_system"]
