"""Stage 4: a study's instances → models.inference → predictions saved on the run.

Files are read and classified outside any transaction; only the result is written, under the claim.
"""

from __future__ import annotations

from pydicom.errors import InvalidDicomError

from daemon import records
from daemon.lifecycle import StudyState
from daemon.log import Event, get_logger
from daemon.queue import Claim
from daemon.stage import Advance, Outcome, StageContext, StageError
from models.preprocess import PixelDecodeError

log = get_logger("classify")


def finding_models(ctx: StageContext) -> set[str]:
    """Models whose predictions are findings (a body-part router alone makes no report)."""
    return {card.name for card in ctx.engine.cards if card.role != "router"} if ctx.engine else set()


def run(ctx: StageContext, claim: Claim) -> Outcome:
    if ctx.engine is None:
        raise StageError("no model is installed (see `predictd models install-demo`)")
    view = records.start_run(ctx.db, claim)
    if not view.instances:
        return Advance(StudyState.SKIPPED, reason="the study has no stored instances")
    try:
        with ctx.inference_lock:
            result = ctx.engine.classify_files([inst.path for inst in view.instances])
    except FileNotFoundError as exc:
        raise StageError(f"spool file missing ({exc.filename})") from exc
    except InvalidDicomError as exc:
        raise StageError(f"unreadable file: {exc}", permanent=True) from exc
    except PixelDecodeError as exc:
        raise StageError(f"pixel data cannot be decoded: {exc}", permanent=True) from exc
    predictions = result.predictions
    if not any(p.model_name in finding_models(ctx) for p in predictions):
        return Advance(StudyState.SKIPPED, reason=result.skip_reason)
    records.save_predictions(ctx.db, claim, predictions, ctx.engine.model_versions)
    for p in predictions:
        log.info(
            Event.PREDICTION_MADE,
            study_uid=claim.study_uid,
            run_no=claim.run_no,
            sop_instance_uid=p.sop_instance_uid,
            model=f"{p.model_name}@{p.model_version}",
            label=p.label,
            laterality=p.laterality,
            probability=round(p.probability, 4),
        )
    return Advance(StudyState.CLASSIFIED)
