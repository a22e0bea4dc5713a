"""Suggest a content class for a capture whose capturer gave none.

The suggestion comes from the sniffed media type, keywords in the OCR text and
two features of the thumbnail that tell a photo from a scanned page. It is
stored in derived_info for HQ and never changes the capture's class. The
confidence is a heuristic score between 0 and 1, not a calibrated probability.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Keywords per class with their weights: 2 for a word that rarely appears in
# other classes, 1 for a word that does. Each keyword counts once per text.
_KEYWORDS: dict[str, tuple[tuple[str, int], ...]] = {
    "receipt": (
        (r"\bsub\s?-?total\b", 2),
        (r"\btotal\b", 2),
        (r"\breceipt\b", 2),
        (r"\binvoice\b", 2),
        (r"\bcash\b", 1),
        (r"\bchange\b", 1),
        (r"\btax\b", 1),
        (r"\b(?:gst|sst|vat)\b", 1),
        # Malaysian ringgit, upper case only so that "rm" in words does not count.
        (r"\b(?-i:RM)\s?\d+[.,]\d{2}\b", 2),
        (r"\b(?-i:RM)\b", 1),
    ),
    "consent": (
        (r"\bconsent\w*", 2),
        (r"\bi\s+hereby\b", 2),
        (r"\bphotograph\w*", 2),
        (r"\bagree[sd]?\b", 1),
        (r"\bsignature\b", 1),
    ),
    "contract": (
        (r"\bagreements?\b", 2),
        (r"\bcontracts?\b", 2),
        (r"\bhereinafter\b", 2),
        (r"\bparties\b", 2),
        (r"\bparty\b", 1),
        (r"\bterms\b", 1),
    ),
}
_COMPILED_KEYWORDS = {
    klass: tuple((re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in keywords)
    for klass, keywords in _KEYWORDS.items()
}
# Prices such as "12.50": receipts list many, other documents few.
_AMOUNT = re.compile(r"(?<![\d.,])\d{1,6}[.,]\d{2}(?![\d.,])")
_MIN_AMOUNTS = 3
_AMOUNTS_WEIGHT = 2
# A readable word: three or more letters in one case or capitalised, with
# optional quotes or punctuation around it. OCR of a photo gives mostly one- and
# two-letter fragments and mixed-case noise instead.
_READABLE_WORD = re.compile(r"[(\"']?(?:[A-Z]?[a-z]{3,}|[A-Z]{3,})[)\"'.,:;!?]?")

# A keyword score of at least this picks the class from the text alone.
MIN_KEYWORD_SCORE = 2
# A thumbnail with at least this share of near-white pixels and at most this
# mean saturation looks like paper. Both were read off the sample scans and
# photos of this repository (scans: 0.40 to 0.96 near-white, saturation below
# 0.04; photos: below 0.20 near-white), so they are estimates.
PAPER_MIN_NEAR_WHITE = 0.35
PAPER_MAX_SATURATION = 0.15
# An estimate: a photographed page is rarely this colourful, and OCR reads word-like noise
# from colourful photos, so above this saturation text does not make a document.
PAGE_PHOTO_MAX_SATURATION = 0.25
NEAR_WHITE_LUMA = 200
# OCR text with at least this many readable words, making up at least this
# share of its tokens, is real text, such as that of a photographed page. With
# tesseract 5.3.0 and --psm 6, the sample receipts scored 25 to 64 words and a
# share of 0.35 to 0.54, and the noise read from sample photos at most 0.19.
MIN_WORDS_FOR_PAGE = 20
MIN_READABLE_SHARE = 0.3

VIDEO_PREFIX = "video/"


@dataclass(frozen=True)
class ImageFeatures:
    """Colour features of a thumbnail, each between 0 and 1."""

    saturation: float
    near_white: float

    @property
    def looks_like_paper(self) -> bool:
        return self.near_white >= PAPER_MIN_NEAR_WHITE and self.saturation <= PAPER_MAX_SATURATION


@dataclass(frozen=True)
class Suggestion:
    """A suggested content class and a heuristic confidence between 0 and 1."""

    klass: str
    confidence: float

    def as_info(self) -> dict[str, str | float]:
        return {"suggested_class": self.klass, "suggested_confidence": round(self.confidence, 2)}


def image_features(image: Image.Image) -> ImageFeatures:
    """Measure the mean HSV saturation and the share of near-white pixels of an image."""
    rgb = image.convert("RGB")
    pixels = rgb.width * rgb.height
    if pixels == 0:
        raise ValueError("the image has no pixels")
    saturation_histogram = rgb.convert("HSV").getchannel("S").histogram()
    saturation = sum(value * count for value, count in enumerate(saturation_histogram)) / (255 * pixels)
    luma_histogram = rgb.convert("L").histogram()
    near_white = sum(luma_histogram[NEAR_WHITE_LUMA:]) / pixels
    return ImageFeatures(saturation=saturation, near_white=near_white)


def image_features_of_file(path: Path) -> ImageFeatures:
    """Measure image_features of a small image file such as a thumbnail.

    Raises OSError when the file cannot be read or decoded. Call it on a
    thumbnail this agent wrote, not on a captured file, because it applies no
    size limit beyond Pillow's own.
    """
    with Image.open(path) as image:
        return image_features(image)


def has_readable_text(text: str) -> bool:
    """Return whether OCR text contains real words rather than the noise OCR reads from photos."""
    tokens = text.split()
    if not tokens:
        return False
    readable = sum(1 for token in tokens if _READABLE_WORD.fullmatch(token))
    return readable >= MIN_WORDS_FOR_PAGE and readable / len(tokens) >= MIN_READABLE_SHARE


def keyword_scores(text: str) -> dict[str, int]:
    """Return the weighted keyword score of each class that has keywords."""
    scores = {}
    for klass, keywords in _COMPILED_KEYWORDS.items():
        scores[klass] = sum(weight for pattern, weight in keywords if pattern.search(text))
    if len(_AMOUNT.findall(text)) >= _MIN_AMOUNTS:
        scores["receipt"] += _AMOUNTS_WEIGHT
    return scores


def suggest_class(media_type: str | None, text: str, features: ImageFeatures | None) -> Suggestion:
    """Suggest one of the content classes for a capture.

    media_type is the sniffed type of the original, text its OCR text ("" when
    there is none) and features those of its thumbnail (None without one).
    """
    if media_type is not None and media_type.startswith(VIDEO_PREFIX):
        return Suggestion("media", 0.95)

    scores = keyword_scores(text)
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    (best_class, best), (_, second) = ranked[0], ranked[1]
    if best >= MIN_KEYWORD_SCORE:
        # More keywords raise the confidence, and a close runner-up lowers it.
        strength = min(0.95, 0.35 + 0.1 * best)
        return Suggestion(best_class, strength * best / (best + second))

    readable = has_readable_text(text)
    if features is None:
        # No thumbnail: a text file, an unsupported type or a file that failed to decode.
        return Suggestion("document", 0.4 if readable else 0.2)
    if features.looks_like_paper:
        return Suggestion("document", 0.6 if readable else 0.5)
    if readable and features.saturation <= PAGE_PHOTO_MAX_SATURATION:
        return Suggestion("document", 0.4)
    # Colour raises the confidence that this is a photo: a grey photo of a grey
    # wall and a dim photo of a page look alike.
    return Suggestion("media", 0.55 + 0.35 * min(1.0, features.saturation / 0.3))

