"""Card templates (models.catalog), tag-derived body parts (models.body_part) and model selection (models.cascade)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import timm

from predictd.models.body_part import BODY_PARTS, body_part_from_tags, body_parts_by_tag
from predictd.models.card import Applicability, CardError, Label, ModelCard
from predictd.models.cascade import select_cards
from predictd.models.catalog import SITE_SPECIFIC_LABELS, TEMPLATE_NOTE, catalog, template
from predictd.models.demo import DEMO_LABELS
from tests.support import CR_JLSL, SHARED_DATA, pydicom_data_file

TASKS = {
    "hip_hardware",
    "body_part",
    "implant_presence",
    "hip_fracture",
    "femoral_fixation_model",
    "shoulder_implant_manufacturer",
    "hip_arthroplasty",
}


def _ds(**tags: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


# --- catalog -------------------------------------------------------------------------------------------------------


def test_catalog_has_every_task_and_each_template_is_sane() -> None:
    cards = catalog()
    assert set(cards) == TASKS
    for task, card in cards.items():
        assert card.task == task
        assert card.version == "0.0.0" and card.sha256 == ""
        assert card.description.startswith(TEMPLATE_NOTE), "training drops this note (trained_description)"
        assert timm.is_model(card.arch), card.arch
        keys = card.label_keys
        assert keys and len(keys) == len(set(keys)), task
        assert set(card.thresholds) <= set(keys)
        assert all(0 < t < 1 for t in card.thresholds.values())
        assert all(part in BODY_PARTS for part in card.applies_to.body_parts)
        for label in card.labels:
            assert label.display and label.code_value is None and label.code_scheme is None


def test_catalog_label_sets_follow_the_papers_and_the_data_folders() -> None:
    cards = catalog()
    assert cards["hip_hardware"].labels == DEMO_LABELS and len(DEMO_LABELS) == 9
    assert cards["hip_hardware"].bilateral and cards["hip_fracture"].bilateral
    assert not cards["hip_arthroplasty"].bilateral
    assert cards["body_part"].role == "router" and tuple(cards["body_part"].label_keys) == BODY_PARTS
    assert all(card.role == "finding" for task, card in cards.items() if task != "body_part")
    assert cards["implant_presence"].label_keys == ["absent", "present"]
    assert cards["shoulder_implant_manufacturer"].label_keys == ["Cofield", "Depuy", "Tornier", "Zimmer"]
    assert cards["hip_arthroplasty"].label_keys == ["no_THA", "yes_THA", "yes_HRA"]
    assert set(SITE_SPECIFIC_LABELS) == {"femoral_fixation_model"}


def test_template_returns_a_card_and_names_known_tasks_when_missing() -> None:
    assert template("hip_hardware") is catalog()["hip_hardware"]
    with pytest.raises(CardError, match="hip_hardware"):
        template("knee_hardware")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_template_round_trips_through_save_and_load(task: str, tmp_path: Path) -> None:
    card = template(task)
    card.save(tmp_path)
    data = json.loads((tmp_path / "card.json").read_text())
    assert isinstance(data["applies_to"]["body_parts"], list) and isinstance(data["applies_to"]["views"], list)
    assert ModelCard.load(tmp_path) == card


def test_new_fields_round_trip(tmp_path: Path) -> None:
    card = ModelCard(
        name="m",
        version="1",
        task="t",
        arch="x",
        labels=(Label("a", "A"),),
        applies_to=Applicability(body_parts=("knee", "femur"), views=("AP", "LAT"), modalities=("CR", "DX")),
        bilateral=True,
        role="router",
    )
    card.save(tmp_path)
    loaded = ModelCard.load(tmp_path)
    assert loaded == card
    assert loaded.applies_to.body_parts == ("knee", "femur") and loaded.applies_to.views == ("AP", "LAT")
    assert loaded.applies_to.modalities == ("CR", "DX")


def test_a_card_written_before_the_cascade_still_loads(tmp_path: Path) -> None:
    old = {
        "name": "old",
        "version": "1.0",
        "task": "hip_hardware",
        "arch": "test_efficientnet",
        "labels": [{"key": "none", "display": "no hardware"}],
        "preprocessing": {"input_size": 64},
        "sha256": "abc",
    }
    (tmp_path / "card.json").write_text(json.dumps(old))
    card = ModelCard.load(tmp_path)
    assert card.applies_to == Applicability() and card.bilateral is False and card.role == "finding"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"applies_to": {"body_parts": ["hipp"]}}, "unknown body parts"),
        ({"applies_to": {"body_parts": "hip_pelvis"}}, "list of strings"),
        ({"applies_to": {"parts": []}}, "unknown fields"),
        ({"applies_to": {"modalities": "CR"}}, "list of strings"),
        ({"role": "boss"}, "role"),
        ({"bilateral": "yes"}, "bilateral"),
    ],
)
def test_malformed_new_fields_are_card_errors(change: dict[str, object], match: str) -> None:
    data = template("hip_hardware").to_dict() | change
    with pytest.raises(CardError, match=match):
        ModelCard.from_dict(data)


# --- body part from tags -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"BodyPartExamined": "HIP"}, "hip_pelvis"),
        ({"BodyPartExamined": "PELVIS"}, "hip_pelvis"),
        ({"BodyPartExamined": "pelvis "}, "hip_pelvis"),
        ({"BodyPartExamined": "SHOULDER"}, "shoulder"),
        ({"BodyPartExamined": "HUMERUS"}, "shoulder"),
        ({"BodyPartExamined": "ARM"}, "shoulder"),
        ({"BodyPartExamined": "ELBOW"}, "elbow"),
        ({"BodyPartExamined": "FOREARM"}, "forearm_wrist_hand"),
        ({"BodyPartExamined": "WRIST"}, "forearm_wrist_hand"),
        ({"BodyPartExamined": "HAND"}, "forearm_wrist_hand"),
        ({"BodyPartExamined": "THIGH"}, "femur"),
        ({"BodyPartExamined": "FEMUR"}, "femur"),
        ({"BodyPartExamined": "KNEE"}, "knee"),
        ({"BodyPartExamined": "LEG"}, "leg_ankle_foot"),
        ({"BodyPartExamined": "ANKLE"}, "leg_ankle_foot"),
        ({"BodyPartExamined": "FOOT"}, "leg_ankle_foot"),
        ({"BodyPartExamined": "LSPINE"}, "spine"),
        ({"BodyPartExamined": "CSPINE"}, "spine"),
        ({"BodyPartExamined": "TSPINE"}, "spine"),
        ({"BodyPartExamined": "L-SPINE"}, "spine"),
        ({"BodyPartExamined": "SPINE"}, "spine"),
        ({"BodyPartExamined": "CHEST"}, "chest"),
        ({"BodyPartExamined": "LEFT HIP"}, "hip_pelvis"),
        ({"StudyDescription": "XR HIP 2V"}, "hip_pelvis"),
        ({"StudyDescription": "PELVIS AP"}, "hip_pelvis"),
        ({"StudyDescription": "Post-op THA check"}, "hip_pelvis"),
        ({"StudyDescription": "XR HIP AP + FROG LEG LAT"}, "hip_pelvis"),
        ({"StudyDescription": "L-SPINE 2 VIEWS"}, "spine"),
        ({"StudyDescription": "xr c spine"}, "spine"),
        ({"StudyDescription": "Lumbar spine"}, "spine"),
        ({"SeriesDescription": "R KNEE LAT"}, "knee"),
        ({"SeriesDescription": "TIB/FIB AP"}, "leg_ankle_foot"),
        ({"ProtocolName": "CXR_PA"}, "chest"),
        ({"ProtocolName": "Shoulder_Grashey"}, "shoulder"),
        ({"StudyDescription": "THORAX"}, "chest"),
        ({"BodyPartExamined": "EXTREMITY", "StudyDescription": "ankle 3v"}, "leg_ankle_foot"),
        ({"BodyPartExamined": "HIP", "StudyDescription": "HIP JOINT", "SeriesDescription": "AP PELVIS"}, "hip_pelvis"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # real headers carry such values
def test_body_part_from_tag_spellings(tags: dict[str, str], expected: str) -> None:
    assert body_part_from_tags(_ds(**tags)) == expected


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"BodyPartExamined": "EXTREMITY"},
        {"BodyPartExamined": "ABDOMEN"},
        {"StudyDescription": "XR OUTSIDE FILMS"},
        {"StudyDescription": "leg length study"},
        {"BodyPartExamined": "KNEE", "StudyDescription": "XR HIP 2V"},
        {"BodyPartExamined": "CHEST", "ProtocolName": "L-SPINE"},
        {"StudyDescription": "ELBOW AND FOREARM"},
        {"StudyDescription": "ENDSHIPMENT", "SeriesDescription": "SHIPPING"},
    ],
)
def test_body_part_from_tags_is_none_when_nothing_matches_or_tags_conflict(tags: dict[str, str]) -> None:
    assert body_part_from_tags(_ds(**tags)) is None


def test_body_part_from_real_files() -> None:
    hip = _header(CR_JLSL)
    assert hip.BodyPartExamined == "HIP"
    assert body_part_from_tags(hip) == "hip_pelvis"
    assert body_part_from_tags(_header(pydicom_data_file("RG1_UNCR.dcm"))) == "chest"
    rg3 = _header(pydicom_data_file("RG3_UNCR.dcm"))  # BodyPartExamined EXTREMITY, the description names the tibia
    assert body_part_from_tags(rg3) == "leg_ankle_foot"
    assert set(body_parts_by_tag(rg3)) == {"StudyDescription"}


# --- cascade -------------------------------------------------------------------------------------------------------


def _finding(name: str, parts: tuple[str, ...] = (), views: tuple[str, ...] = ()) -> ModelCard:
    return ModelCard(
        name=name,
        version="1",
        task=name,
        arch="x",
        labels=(Label("a", "A"),),
        applies_to=Applicability(body_parts=parts, views=views),
    )


def test_select_cards_picks_the_hip_cards_for_the_real_hip_file() -> None:
    selection = select_cards(list(catalog().values()), _header(CR_JLSL))
    names = {card.name for card in selection.cards}
    assert {"hip_hardware", "hip_fracture", "hip_arthroplasty", "implant_presence"} == names
    assert "body_part" not in names
    assert "shoulder_implant_manufacturer" not in names
    assert "femoral_fixation_model" not in names  # AP only; the file has no ViewPosition
    assert selection.body_part == "hip_pelvis" and selection.source == "tags"
    assert "body part hip_pelvis from BodyPartExamined/StudyDescription tags" in selection.reason
    assert "4 models apply" in selection.reason


def test_select_cards_picks_nothing_for_the_chest_file_and_says_why() -> None:
    restricted = [card for card in catalog().values() if card.applies_to.body_parts or card.role == "router"]
    selection = select_cards(restricted, _header(pydicom_data_file("RG1_UNCR.dcm")))
    assert selection.cards == ()
    assert selection.body_part == "chest" and selection.source == "tags"
    assert selection.reason == "no installed model applies to body part chest (from tags)"


def test_the_model_answer_overrides_the_tags() -> None:
    cards = [_finding("hip", ("hip_pelvis",)), _finding("knee", ("knee",))]
    selection = select_cards(cards, _header(CR_JLSL), body_part_from_model="knee")
    assert [card.name for card in selection.cards] == ["knee"]
    assert selection.body_part == "knee" and selection.source == "model"
    assert "from the body_part model" in selection.reason and "tags say hip_pelvis" in selection.reason


def test_an_indeterminate_model_answer_falls_back_to_the_tags() -> None:
    cards = [_finding("hip", ("hip_pelvis",))]
    for answer in ("indeterminate", None):
        selection = select_cards(cards, _header(CR_JLSL), body_part_from_model=answer)
        assert selection.source == "tags" and [card.name for card in selection.cards] == ["hip"]


def test_restricted_cards_do_not_apply_when_the_body_part_is_unknown() -> None:
    cards = [_finding("hip", ("hip_pelvis",)), _finding("any")]
    selection = select_cards(cards, _ds(BodyPartExamined="KNEE", StudyDescription="XR HIP"))
    assert [card.name for card in selection.cards] == ["any"]
    assert selection.body_part is None and selection.source == "none"
    assert "conflict" in selection.reason
    empty = select_cards([_finding("hip", ("hip_pelvis",))], _ds())
    assert empty.cards == () and empty.source == "none" and "no installed model applies" in empty.reason


def test_view_restriction() -> None:
    cards = [_finding("ap_only", ("hip_pelvis",), ("AP",)), _finding("any_view", ("hip_pelvis",))]
    ap = select_cards(cards, _ds(BodyPartExamined="HIP", ViewPosition="AP"))
    assert [card.name for card in ap.cards] == ["ap_only", "any_view"]
    lat = select_cards(cards, _ds(BodyPartExamined="HIP", ViewPosition="LL"))
    assert [card.name for card in lat.cards] == ["any_view"]
    assert "ap_only needs view AP, image has LL" in lat.reason


def test_a_card_reads_only_its_modalities_and_images_that_name_none() -> None:
    only = Applicability(body_parts=("hip_pelvis",), modalities=("CR", "DX"))
    radiograph_only = replace(_finding("hip", ("hip_pelvis",)), applies_to=only)
    cards = [radiograph_only, _finding("any")]
    ct = select_cards(cards, _ds(BodyPartExamined="PELVIS", Modality="CT"))
    assert [card.name for card in ct.cards] == ["any"]
    assert "hip reads CR/DX, image is CT" in ct.reason
    for tags in ({"Modality": "DX"}, {"Modality": "CR "}, {}):  # none given: a film digitiser's Secondary Capture
        selection = select_cards(cards, _ds(BodyPartExamined="PELVIS", **tags))
        assert [card.name for card in selection.cards] == ["hip", "any"], tags


def test_shipped_radiograph_cards_do_not_read_ct_mr_or_ultrasound() -> None:
    findings = [card for card in catalog().values() if card.role == "finding"]
    assert findings and all({"CR", "DX"} <= set(card.applies_to.modalities) for card in findings)
    assert not any({"CT", "MR", "US"} & set(card.applies_to.modalities) for card in findings)


def test_router_cards_are_never_findings() -> None:
    router = replace(_finding("body_part"), role="router")
    selection = select_cards([router, _finding("any")], _header(pydicom_data_file("RG1_UNCR.dcm")))
    assert [card.name for card in selection.cards] == ["any"]
    only_router = select_cards([router], _header(CR_JLSL), body_part_from_model="hip_pelvis")
    assert only_router.cards == ()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("task", "folder"),
    [("shoulder_implant_manufacturer", "shoulder_implant_uci"), ("hip_arthroplasty", "hip_tha_radiologyai")],
)
def test_catalog_labels_are_the_training_sets_folders(task: str, folder: str) -> None:
    labels = {p.name for p in (SHARED_DATA / folder).iterdir() if p.is_dir()}
    assert set(catalog()[task].label_keys) == labels
