"""reporting.text: the wording a radiologist sees first, including the safety lines that must never be missing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from predictd.daemon.config import Settings
from predictd.models.card import Applicability, Label, ModelCard
from predictd.models.demo import DEMO_LABELS
from predictd.models.prediction import Prediction
from predictd.reporting.text import check_templates, report_text

AI_LINE = "AI-generated preliminary text (predictd, hip@1.0); not verified by a radiologist."
BANNER = "DEMONSTRATION ONLY: produced by an untrained model; the findings below are meaningless."

HIP = ModelCard(
    name="hip",
    version="1.0",
    task="hip_hardware",
    arch="x",
    labels=(
        Label("none", "no hip hardware", phrase="no hip arthroplasty or fixation hardware"),
        Label("tha", "total hip arthroplasty"),
        Label("hemi", "hemiarthroplasty"),
    ),
)
KNEE = ModelCard(
    name="knee", version="0.3", task="knee_hardware", arch="x", labels=(Label("tka", "total knee arthroplasty"),)
)
CARDS = {"hip": HIP, "knee": KNEE}


def _p(
    label: str,
    probability: float,
    *,
    image: str = "1.2.3.1",
    laterality: str | None = None,
    model: ModelCard = HIP,
    untrained: bool = False,
) -> Prediction:
    return Prediction(
        model_name=model.name,
        model_version=model.version,
        task=model.task,
        sop_instance_uid=image,
        series_instance_uid="1.2.3",
        label=label,
        probability=probability,
        laterality=laterality,
        untrained=untrained,
    )


def test_one_image_one_line_and_ai_line() -> None:
    text = report_text([_p("tha", 0.934)], CARDS)
    assert text.splitlines() == ["Hip hardware: total hip arthroplasty (probability 0.93).", AI_LINE]


def test_report_phrase_is_preferred_over_display() -> None:
    assert report_text([_p("none", 0.8)], CARDS).splitlines()[0] == (
        "Hip hardware: no hip arthroplasty or fixation hardware (probability 0.80)."
    )


def test_laterality_prefix_and_order() -> None:
    text = report_text([_p("hemi", 0.71, laterality="L"), _p("tha", 0.9, laterality="R")], CARDS)
    assert text.splitlines()[:2] == [
        "Right hip hardware: total hip arthroplasty (probability 0.90).",
        "Left hip hardware: hemiarthroplasty (probability 0.71).",
    ]


def test_indeterminate() -> None:
    text = report_text([_p(Prediction.INDETERMINATE, 0.41)], CARDS)
    assert text.splitlines()[0] == "Hip hardware: indeterminate (no class reached its threshold)."
    assert "0.41" not in text


@pytest.mark.parametrize(
    ("probability", "shown"), [(0.5, "0.50"), (0.12345, "0.12"), (0.996, "1.00"), (0.9349, "0.93")]
)
def test_probability_rounded_to_two_decimals(probability: float, shown: str) -> None:
    assert f"(probability {shown})." in report_text([_p("tha", probability)], CARDS)


def test_untrained_banner_comes_first() -> None:
    lines = report_text([_p("tha", 0.9, untrained=True)], CARDS).splitlines()
    assert lines[0] == BANNER
    assert lines[-1] == AI_LINE


def test_no_banner_for_trained_models() -> None:
    assert "DEMONSTRATION" not in report_text([_p("tha", 0.9)], CARDS)


def test_several_images_agreeing_give_the_best_probability() -> None:
    text = report_text([_p("tha", 0.81, image="a"), _p("tha", 0.93, image="b")], CARDS)
    assert text.splitlines() == ["Hip hardware: total hip arthroplasty (probability 0.93).", AI_LINE]


def test_several_images_disagreeing_are_mentioned() -> None:
    preds = [_p("hemi", 0.62, image="a"), _p("tha", 0.93, image="b"), _p(Prediction.INDETERMINATE, 0.4, image="c")]
    assert report_text(preds, CARDS).splitlines()[0] == (
        "Hip hardware: total hip arthroplasty (probability 0.93; images disagree: hemiarthroplasty on 1 of 3 images,"
        " indeterminate on 1 of 3 images)."
    )


def test_indeterminate_image_does_not_win_over_a_decided_one() -> None:
    preds = [_p(Prediction.INDETERMINATE, 0.45, image="a"), _p("tha", 0.7, image="b")]
    assert report_text(preds, CARDS).splitlines()[0].startswith("Hip hardware: total hip arthroplasty (probability")


def test_all_images_indeterminate() -> None:
    preds = [_p(Prediction.INDETERMINATE, 0.45, image="a"), _p(Prediction.INDETERMINATE, 0.4, image="b")]
    assert report_text(preds, CARDS).splitlines()[0] == "Hip hardware: indeterminate (no class reached its threshold)."


def test_two_models_two_tasks_listed_in_ai_line() -> None:
    text = report_text([_p("tha", 0.9), _p("tka", 0.88, model=KNEE)], CARDS)
    assert text.splitlines() == [
        "Hip hardware: total hip arthroplasty (probability 0.90).",
        "Knee hardware: total knee arthroplasty (probability 0.88).",
        "AI-generated preliminary text (predictd, hip@1.0, knee@0.3); not verified by a radiologist.",
    ]


def test_no_predictions() -> None:
    lines = report_text([], CARDS).splitlines()
    assert "no applicable" in lines[0].lower()
    assert lines[-1].startswith("AI-generated preliminary text (predictd")
    assert lines[-1].endswith("not verified by a radiologist.")


def test_unknown_model_or_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="no model card"):
        report_text([_p("tha", 0.9)], {})
    with pytest.raises(ValueError, match="no label"):
        report_text([_p("bogus", 0.9)], CARDS)


def test_halves_of_unknown_side_are_two_lines_not_a_disagreement() -> None:
    card = ModelCard(name="m", version="1", task="hip_hardware", arch="x", labels=DEMO_LABELS)
    preds = [
        Prediction("m", "1", "hip_hardware", "1.2", "1.3", label, 0.9, {}, None, region=region)
        for label, region in (("tha", "image-left"), ("none", "image-right"))
    ]
    text = report_text(preds, {"m": card})
    assert "Hip hardware, image-left half (side not determined): total hip arthroplasty (probability 0.90)." in text
    assert "Hip hardware, image-right half (side not determined): no hardware (probability 0.90)." in text
    assert "disagree" not in text


# --- region headings: what a radiologist dictates -------------------------------------------------------------------

HIP_REGION = ModelCard(
    name="hiphw",
    version="2",
    task="hip_hardware",
    arch="x",
    labels=(Label("none", "no hardware"), Label("tha", "total hip arthroplasty")),
    applies_to=Applicability(body_parts=("hip_pelvis",)),
    bilateral=True,
)
FRACTURE = ModelCard(
    name="fx",
    version="1",
    task="hip_fracture",
    arch="x",
    labels=(Label("no", "no fracture", phrase="no hip fracture identified"), Label("yes", "hip fracture suspected")),
    applies_to=Applicability(body_parts=("hip_pelvis", "femur")),
)
ROUTER = ModelCard(
    name="bp",
    version="1",
    task="body_part",
    arch="x",
    labels=(Label("hip_pelvis", "hip or pelvis"),),
    role="router",
)
REGION_CARDS = {"hiphw": HIP_REGION, "fx": FRACTURE, "bp": ROUTER}


def test_one_line_per_region_and_side_as_dictated() -> None:
    preds = [
        _p("hip_pelvis", 0.991, model=ROUTER),
        _p("none", 0.914, laterality="L", model=HIP_REGION),
        _p("tha", 0.972, laterality="R", model=HIP_REGION),
        _p("no", 0.876, laterality="R", model=FRACTURE),
    ]
    assert report_text(preds, REGION_CARDS).splitlines()[:3] == [
        "Body part: hip or pelvis (probability 0.99).",
        "Right hip: total hip arthroplasty (probability 0.97); no hip fracture identified (probability 0.88).",
        "Left hip: no hardware (probability 0.91).",
    ]


def test_indeterminate_under_a_region_heading_names_its_task() -> None:
    preds = [_p("tha", 0.9, laterality="R", model=HIP_REGION), _p(Prediction.INDETERMINATE, 0.4, model=FRACTURE)]
    lines = report_text(preds, REGION_CARDS).splitlines()
    assert lines[:2] == [
        "Right hip: total hip arthroplasty (probability 0.90).",
        "Hip: hip fracture indeterminate (no class reached its threshold).",
    ]


# --- site templates ----------------------------------------------------------------------------------------------


def test_line_template_changes_the_wording_and_rounds_nothing_again() -> None:
    template = "{{ heading|upper }} -- {% for f in findings %}{{ f.phrase }} [{{ f.probability }}]{% endfor %}"
    text = report_text([_p("tha", 0.9349, laterality="R", model=HIP_REGION)], REGION_CARDS, {"line": template})
    assert text.splitlines()[0] == "RIGHT HIP -- total hip arthroplasty [0.93]"


def test_document_template_cannot_drop_the_safety_lines() -> None:
    preds = [_p("tha", 0.9, untrained=True, model=HIP_REGION)]
    text = report_text(preds, REGION_CARDS, {"document": "FINDINGS:\n{{ lines | join('\n') }}\n"})
    lines = text.splitlines()
    assert lines[0] == BANNER
    assert lines[1:3] == ["FINDINGS:", "Hip: total hip arthroplasty (probability 0.90)."]
    assert lines[-1] == "AI-generated preliminary text (predictd, hiphw@2); not verified by a radiologist."


def test_a_line_template_cannot_split_a_line() -> None:
    text = report_text([_p("tha", 0.9, model=HIP_REGION)], REGION_CARDS, {"line": "{{ heading }}:\n  found"})
    assert text.splitlines()[0] == "Hip: found"


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ({"lines": "x"}, "unknown report template"),
        ({"line": "{{ heading "}, "report template 'line'"),
        ({"line": "{{ headline }}"}, "headline"),
        ({"document": "{{ lines.__class__.__mro__ }}"}, "report template 'document'"),
    ],
)
def test_bad_templates_are_refused_by_name(templates: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_templates(templates)


def test_a_bad_template_stops_the_config_from_loading() -> None:
    with pytest.raises(ValidationError, match="headline"):
        Settings(report={"templates": {"line": "{{ headline }}"}})


def _refused(probability: float = 0.99, **kwargs: object) -> Prediction:
    p = _p(Prediction.NOT_ASSESSED, probability, **kwargs)  # type: ignore[arg-type]
    return Prediction(**{**p.to_dict(), "gate_score": 4.2, "gate_threshold": 1.1})


def test_not_assessed_never_names_a_class_or_a_probability() -> None:
    refused = _refused(0.99, laterality="R")
    text = report_text([refused], CARDS)
    first = text.splitlines()[0]
    assert first == "Right hip hardware: not assessed (the image is unlike those this model was trained on)."
    for label in HIP.labels:
        assert label.display not in text and label.report_phrase not in text
    assert "0.99" not in text and "probability" not in first


def test_a_refused_image_beside_decided_ones_is_named() -> None:
    text = report_text([_p("tha", 0.9, image="1.2.3.1"), _refused(image="1.2.3.2")], CARDS)
    assert text.splitlines()[0] == (
        "Hip hardware: total hip arthroplasty (probability 0.90; images disagree: not assessed on 1 of 2 images)."
    )


def test_templates_see_not_assessed() -> None:
    line = "{{ heading }}: {% for f in findings %}{{ 'NA' if f.not_assessed else f.phrase }}{% endfor %}"
    assert report_text([_refused()], CARDS, {"line": line}).splitlines()[0] == "Hip hardware: NA"
    check_templates({"line": line})


def test_not_assessed_reason_carries_the_gate_score() -> None:
    assert _refused().not_assessed_reason == (
        "not assessed: the image is unlike those this model was trained on (domain score 4.20 > 1.10)"
    )
