"""Pixel decoding with the fastest pydicom plugin installed for each transfer syntax. Pure: no torch, no I/O.

pydicom 3 tries its plugins in a fixed order (gdcm, pylibjpeg, then pyjpegls / pillow / its own RLE decoder) and
uses the first that is installed, which is not the fastest one: JPEG-LS goes to pylibjpeg (CharLS through pyjpegls is
~3x faster) and JPEG lossless to pylibjpeg (GDCM is 1.4-2x faster). :data:`PREFERRED` puts them in the order measured
by ``python -m bench.decoders`` (see bench/DECODERS.md); every plugin listed there gave the source's pixels bit for bit
on the lossless syntaxes.

A plugin that fails hands over to the next only when it says it cannot handle the file ("not supported", a missing
codec). Any other failure means the stream is invalid, and the instance fails with that decoder's message
(:class:`InvalidPixelData`): with one flipped bit in a JPEG-LS stream CharLS and GDCM refuse it, and pylibjpeg, next
in line, decodes 30-90% of the pixels wrong without a word.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.utils import get_image_pixel_ids
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from predictd.models.phi import scrub

PREFERRED: dict[str, tuple[str, ...]] = {
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLossless: ("gdcm", "pylibjpeg"),  # process 14, other predictors: same codecs as SV1 (not measured)
    JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG2000Lossless: ("pylibjpeg", "pillow", "gdcm"),
    JPEG2000: ("pylibjpeg", "pillow", "gdcm"),
    JPEGExtended12Bit: ("pylibjpeg",),  # gdcm and pillow refuse 12-bit samples
    RLELossless: ("pylibjpeg", "pydicom"),
}
"""Transfer syntax UID → pydicom decoding plugin names, fastest first. Syntaxes not listed (uncompressed, JPEG
baseline, HTJ2K) use pydicom's own choice."""


CAPABILITY_REFUSALS = ("not supported", "unsupported", "does not support", "not implemented", "missing dependenc")
"""Words in a plugin's error that mean "this decoder cannot handle the file" rather than "the stream is invalid"."""


class InvalidPixelData(ValueError):
    """The decoder for this transfer syntax refused the stream itself: corrupt pixel data, not an unsupported one."""


def _plugin_message(exc: Exception, name: str) -> str:
    """The plugin's own words: pydicom wraps them as "Unable to decode ... plugins:\n  name: message"."""
    text = str(exc)
    marker = f"{name}: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return scrub(" ".join(text.split()))[:300]


def _cannot_handle(exc: Exception, message: str) -> bool:
    return isinstance(exc, NotImplementedError) or any(word in message.lower() for word in CAPABILITY_REFUSALS)


def preferred_plugins(ds: pydicom.Dataset) -> tuple[str, ...]:
    """The preferred plugins installed for the syntax of ``ds``, in the order tried (empty: pydicom's own choice)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None or uid not in PREFERRED:
        return ()
    try:
        available = get_decoder(uid).available_plugins
    except NotImplementedError:  # no decoder at all: let the default path raise pydicom's own error
        return ()
    return tuple(name for name in PREFERRED[uid] if name in available)


def _default_path(ds: pydicom.Dataset) -> bool:
    """Whether to leave ``ds`` to ``ds.pixel_array``: already decoded, or the caller chose pixel array options.

    Reads pydicom's own cache attributes (``Dataset.convert_pixel_data`` keeps them); if a later pydicom renames them
    this is merely slower (no cache hit), never wrong.
    """
    opts = getattr(ds, "_pixel_array_opts", None) or {"use_pdh": False}
    if opts.keys() != {"use_pdh"} or opts["use_pdh"]:
        return True  # the caller called ds.pixel_array_options (index, raw, decoding_plugin, v2 backend): honour it
    return getattr(ds, "_pixel_array", None) is not None and getattr(ds, "_pixel_id", None) == get_image_pixel_ids(ds)


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """All frames of ``ds`` as ``ds.pixel_array`` gives them, decoded by the fastest plugin installed.

    A preferred plugin that cannot handle this file (a variant it does not support) hands over to the next one, then
    to pydicom's default choice, whose exception (RuntimeError, NotImplementedError, ValueError, ...) is raised as is;
    one that finds the stream invalid raises :class:`InvalidPixelData` naming itself and the syntax.
    Like ``ds.pixel_array``, the array is cached on ``ds`` (a second call, e.g. for another window, does not decode
    again); pixel array options the caller set with ``ds.pixel_array_options`` are honoured and left as they are.
    """
    if not _default_path(ds):
        for name in preferred_plugins(ds):
            try:
                arr: np.ndarray = pixel_array(ds, decoding_plugin=name)
            except Exception as exc:
                message = _plugin_message(exc, name)
                if _cannot_handle(exc, message):  # e.g. pillow refusing 12-bit JPEG: the next one may
                    continue
                syntax = ds.file_meta.TransferSyntaxUID.name
                raise InvalidPixelData(f"{syntax} pixel data refused by the {name} decoder: {message}") from exc
            ds._pixel_array, ds._pixel_id = arr, get_image_pixel_ids(ds)  # what ds.pixel_array caches
            return arr
    default: np.ndarray = ds.pixel_array
    return default
