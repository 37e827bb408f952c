"""Stage 4: a study's instances → models.inference → predictions saved on the run.

Files are read and classified outside any transaction; only the result is written, under the claim. Several ready
studies can be classified in one engine call (:func:`run_batch`), so batches span studies and the GPU stays full.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydicom.errors import InvalidDicomError

from predictd.daemon import metrics, records
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import Event, get_logger
from predictd.daemon.queue import Claim
from predictd.daemon.spool import durable_write
from predictd.daemon.stage import Advance, Outcome, StageContext, StageError, captured
from predictd.models.cascade import Classification
from predictd.models.decode_pool import DecodeWorkerError
from predictd.models.phi import exception_text
from predictd.models.preprocess import PixelDecodeError

if TYPE_CHECKING:  # torch is imported when the engine loads, after the receiver listens
    from predictd.models.inference import Engine

log = get_logger("classify")


def run(ctx: StageContext, claim: Claim) -> Outcome:
    engine = _engine(ctx)
    view = records.start_run(ctx.db, claim)
    return _conclude(ctx, claim, view, _classify(ctx, engine, [view]))


def run_batch(ctx: StageContext, claims: Sequence[Claim]) -> list[Outcome | Exception]:
    """Classify several studies in one engine call; each gets its own outcome (or the error that stopped it).

    If the shared call fails (one study's pixels cannot be decoded, a file is missing), every study is classified
    on its own, so the bad one fails alone and the others go through.
    """
    try:
        engine = _engine(ctx)
        views = [records.start_run(ctx.db, c) for c in claims]
        result = _classify(ctx, engine, views)
    except Exception:
        return [captured(partial(run, ctx, c)) for c in claims]
    return [captured(partial(_conclude, ctx, c, v, result)) for c, v in zip(claims, views, strict=True)]


def _engine(ctx: StageContext) -> Engine:
    if ctx.engine is None:
        raise StageError("no model is installed (see `predictd models install-demo`)")
    return ctx.engine


def _classify(ctx: StageContext, engine: Engine, views: Sequence[records.RunView]) -> Classification:
    try:
        with ctx.inference_lock:
            paths = [inst.path for view in views for inst in view.instances]
            return engine.classify_files(paths, overlays=ctx.settings.report.key_images)
    except FileNotFoundError as exc:
        raise StageError(f"spool file missing ({exc.filename})") from exc
    except InvalidDicomError as exc:
        raise StageError(f"unreadable file: {exception_text(exc)}", permanent=True) from exc
    except PixelDecodeError as exc:
        raise StageError(f"pixel data cannot be decoded: {exc}", permanent=True) from exc  # scrubbed where raised
    except DecodeWorkerError as exc:  # reproduced: the image kills its decoder every time, retrying cannot help
        raise StageError(str(exc), permanent=exc.reproduced) from exc  # names instance, syntax, decoder


def _conclude(ctx: StageContext, claim: Claim, view: records.RunView, result: Classification) -> Outcome:
    """This study's share of the result: saved as the run's predictions, or the study is skipped with the reason."""
    if not view.instances:
        return Advance(StudyState.SKIPPED, reason="the study has no stored instances")
    engine = _engine(ctx)
    mine = {inst.sop_instance_uid for inst in view.instances}
    indices = [i for i, p in enumerate(result.predictions) if p.sop_instance_uid in mine]
    own = Classification(
        predictions=[result.predictions[i] for i in indices],
        selections={uid: s for uid, s in result.selections.items() if uid in mine},
        overlays={n: result.overlays[i] for n, i in enumerate(indices) if i in result.overlays},
    )
    _write_overlays(ctx, view, own.overlays)
    findings = {card.name for card in engine.cards if card.role != "router"}
    if not any(p.model_name in findings for p in own.predictions):
        if not ctx.settings.report.send_not_assessed:
            return Advance(StudyState.SKIPPED, reason=own.skip_reason)
        # The reading room gets an answer: the report stage sends a "not assessed" SR naming the reason.
        records.save_predictions(
            ctx.db,
            claim,
            own.predictions,
            engine.model_versions,
            not_assessed_reason=own.skip_reason,
            cards=engine.cards,
        )
        log.info(Event.STUDY_NOT_ASSESSED, study_uid=claim.study_uid, run_no=claim.run_no, reason=own.skip_reason)
        return Advance(StudyState.CLASSIFIED)
    records.save_predictions(ctx.db, claim, own.predictions, engine.model_versions, cards=engine.cards)
    for p in own.predictions:
        outcome = "not_assessed" if p.is_not_assessed else "indeterminate" if p.is_indeterminate else "finding"
        metrics.PREDICTIONS.labels(p.model_name, outcome).inc()
        log.info(
            Event.PREDICTION_MADE,
            study_uid=claim.study_uid,
            run_no=claim.run_no,
            sop_instance_uid=p.sop_instance_uid,
            model=f"{p.model_name}@{p.model_version}",
            label=p.label,
            laterality=p.laterality,
            probability=round(p.probability, 4),
            gate_score=None if p.gate_score is None else round(p.gate_score, 4),
        )
    return Advance(StudyState.CLASSIFIED)


def _write_overlays(ctx: StageContext, view: records.RunView, overlays: Mapping[int, np.ndarray]) -> None:
    """The key-image overlays, by prediction index, as PNGs beside the run's documents (the report stage builds the
    Secondary Captures from them), after removing any an earlier attempt of this run drew. Written before the
    predictions are saved: a run whose predictions are saved has its overlays on disk."""
    for stale in ctx.spool.overlay_paths(view.study_uid, view.run_no):
        stale.unlink(missing_ok=True)
    for index, rgb in overlays.items():
        png = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(png, format="PNG", compress_level=1)  # fast; ~1 MB at 1024 px
        durable_write(ctx.spool.overlay_path(view.study_uid, view.run_no, index), png.getvalue())
