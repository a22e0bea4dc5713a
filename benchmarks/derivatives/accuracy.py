"""Measure OCR settings on receipts with ground truth: field recall and OCR time per receipt.

Usage (from the repository root):

    .venv/bin/python benchmarks/derivatives/accuracy.py [--extra-receipts DIR] [--settings a,b] [--json FILE]

Each receipt is a ``NAME.jpg`` with a ``NAME.fields.json`` beside it that contains
the ground truth ``company``, ``date`` and ``total``. The bundled receipts come
from src/boothsync/samples/receipt and tests/data/receipts. ``--extra-receipts``
adds the ``sroie_*.jpg`` files of another folder, reported as a second group.
Files with the same content are measured once.

For every receipt, each setting runs OCR once (the order rotates from one
receipt to the next), ``boothsync.agent.receipts.extract_fields`` reads the
text, and the fields are scored:

- total: the values compare as decimals, ignoring currency marks ("RM4.00" = "4.00").
- date: both sides are parsed as day-first dates, so 25/12/2018, 25-12-2018,
  25032018 and "25 MAY 2017" compare as dates. The extracted ISO value counts.
- company: case-insensitive, after replacing every run of characters other than
  letters and digits with one space; a match is a difflib ratio of at least 0.8.
- currency: the ISO 4217 code must equal the ground truth's ``currency``, which
  is MYR for every sroie_* receipt.

"in text" recall asks whether the value occurs in the OCR text at all (any
amount, any date, or any line or pair of lines for the company), which is the
ceiling for the extractor on that text.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from boothsync.agent.derivatives import DEFAULT_OCR_SETTINGS, DONE, OcrSettings, extract_text
from boothsync.agent.receipts import extract_fields

REPO = Path(__file__).resolve().parents[2]
BUNDLED_DIRS = [REPO / "src" / "boothsync" / "samples" / "receipt", REPO / "tests" / "data" / "receipts"]
DEFAULT_EXTRA_DIR = REPO.parent / "shared" / "data" / "receipts"
COMPANY_MIN_RATIO = 0.8
SCORED_FIELDS = ("date", "total", "company", "currency")
# SROIE's receipts are from Malaysia and priced in ringgit, so their ground truth,
# which has no currency, is taken as MYR.
SROIE_CURRENCY = "MYR"

TESSERACT_SETTINGS = {
    "tesseract psm 3": OcrSettings(psm=3),
    "tesseract psm 4": OcrSettings(psm=4),
    "tesseract psm 6": OcrSettings(psm=6),
    "tesseract psm 4, no upscale": OcrSettings(psm=4, min_long_side=0),
    "tesseract psm 4, binarized": OcrSettings(psm=4, binarize=True),
    "tesseract psm 6, binarized": OcrSettings(psm=6, binarize=True),
}
RAPIDOCR_SETTINGS = {"rapidocr 1 thread": 1, "rapidocr 2 threads": 2}


# --- scoring (tested in tests/test_receipts.py) ---------------------------------

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def parse_amount(text: str | None) -> Decimal | None:
    """Return the decimal value of an amount such as "RM4.00", "$8.70" or "1,234.50"."""
    if text is None:
        return None
    digits = re.sub(r"[^\d.]", "", text.replace(",", ""))
    if not digits:
        return None
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


def parse_truth_date(text: str | None) -> datetime.date | None:
    """Parse a day-first date in any of the ground truth's forms, or return None."""
    if not text:
        return None
    text = text.strip().lower()
    forms = [
        (r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", ("y", "m", "d")),
        (r"(\d{1,2})[-/. ~](\d{1,2})[-/. ~](\d{2,4})", ("d", "m", "y")),
        (r"(\d{2})(\d{2})(\d{4})", ("d", "m", "y")),
        (r"(\d{1,2})[\s\-/.]*([a-z]{3})[a-z]*\.?[\s\-/.,]*(\d{2,4})", ("d", "mon", "y")),
    ]
    for pattern, order in forms:
        match = re.fullmatch(pattern, text)
        if match is None:
            continue
        parts = dict(zip(order, match.groups(), strict=True))
        if "mon" in parts:
            if parts["mon"] not in _MONTHS:
                continue
            parts["m"] = str(_MONTHS.index(parts["mon"]) + 1)
        year = int(parts["y"])
        year += 2000 if year < 100 else 0
        try:
            return datetime.date(year, int(parts["m"]), int(parts["d"]))
        except ValueError:
            return None
    return None


def normalise_company(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.casefold()).split())


def company_matches(predicted: str | None, truth: str) -> bool:
    if not predicted:
        return False
    ratio = difflib.SequenceMatcher(None, normalise_company(predicted), normalise_company(truth)).ratio()
    return ratio >= COMPANY_MIN_RATIO


def score_fields(fields: dict, truth: dict) -> dict[str, bool]:
    """Score extract_fields output against one receipt's ground truth."""
    date_field, total_field, merchant_field = fields.get("date"), fields.get("total"), fields.get("merchant")
    currency_field = fields.get("currency")
    truth_date = parse_truth_date(truth.get("date"))
    truth_total = parse_amount(truth.get("total"))

    predicted_date = date_field.get("value") if date_field else None
    predicted_total = parse_amount(total_field.get("value")) if total_field else None
    return {
        "date": truth_date is not None and predicted_date == truth_date.isoformat(),
        "total": truth_total is not None and predicted_total == truth_total,
        "company": company_matches(merchant_field.get("value") if merchant_field else None, truth["company"]),
        "currency": currency_field is not None and currency_field.get("value") == truth.get("currency"),
    }


def score_text(text: str, truth: dict) -> dict[str, bool]:
    """Report whether each ground truth value occurs anywhere in the OCR text."""
    truth_total = parse_amount(truth.get("total"))
    amounts = {parse_amount(match) for match in re.findall(r"\d[\d,]*\.\s?\d{2}(?!\d)", text)}
    truth_date = parse_truth_date(truth.get("date"))
    numeric_dates = re.findall(
        r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}\s?[-/.~]\s?\d{1,2}\s?[-/.~]\s?\d{2,4}|\d{8})(?!\d)",
        text,
    )
    named_dates = re.findall(r"(?<!\d)\d{1,2}[\s\-/.]*[A-Za-z]{3,9}\.?[\s\-/.,]*\d{2,4}(?!\d)", text)
    dates = {parse_truth_date(found.replace(" ", "")) for found in numeric_dates}
    dates |= {parse_truth_date(found) for found in named_dates}
    lines = [line for line in text.splitlines() if line.strip()]
    windows = lines + [f"{first} {second}" for first, second in zip(lines, lines[1:], strict=False)]
    return {
        "date": truth_date is not None and truth_date in dates,
        "total": truth_total is not None and truth_total in amounts,
        "company": any(company_matches(window, truth["company"]) for window in windows),
        "currency": truth.get("currency") == SROIE_CURRENCY and re.search(r"RM|MYR", text) is not None,
    }


# --- receipts and OCR engines ---------------------------------------------------


@dataclass
class Receipt:
    name: str
    path: Path
    truth: dict
    group: str


def load_receipts(extra_dir: Path | None) -> list[Receipt]:
    """Return the bundled receipts with ground truth, then those of extra_dir, each content once."""
    seen: set[str] = set()
    receipts = []
    sources = [(directory, "*.jpg", "bundled") for directory in BUNDLED_DIRS]
    if extra_dir is not None and extra_dir.is_dir():
        sources.append((extra_dir, "sroie_*.jpg", "extra"))
    for directory, pattern, group in sources:
        for image in sorted(directory.glob(pattern)):
            truth_path = image.with_name(f"{image.stem}.fields.json")
            if not truth_path.exists():
                continue
            digest = hashlib.sha256(image.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            truth = json.loads(truth_path.read_text(encoding="utf-8"))
            if image.name.startswith("sroie_"):
                truth.setdefault("currency", SROIE_CURRENCY)
            receipts.append(Receipt(image.stem, image, truth, group))
    return receipts


OcrEngine = Callable[[Path], str]


def tesseract_engine(settings: OcrSettings, work_dir: Path) -> OcrEngine:
    """Return an engine that runs boothsync's own extract_text with settings."""

    def run(path: Path) -> str:
        dest = work_dir / f"{path.stem}.txt"
        result = extract_text(path, dest, settings=settings)
        if result.status != DONE:
            raise RuntimeError(f"OCR of {path.name} {result.status}: {result.reason}")
        return dest.read_text(encoding="utf-8")

    return run


def rapidocr_engine(threads: int) -> tuple[OcrEngine, float]:
    """Return a RapidOCR engine (its models ship inside the wheel) and its start-up time in seconds."""
    # The models ship inside the rapidocr wheel, so nothing may be fetched at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rapidocr import RapidOCR

    started = time.perf_counter()
    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    startup_s = time.perf_counter() - started

    def run(path: Path) -> str:
        return "\n".join(engine(str(path)).txts or ())

    return run, startup_s


def rapidocr_available() -> bool:
    try:
        import rapidocr  # noqa: F401
    except ImportError:
        return False
    return True


# --- the measurement ------------------------------------------------------------


@dataclass
class SettingResult:
    name: str
    times_s: list[float] = field(default_factory=list)
    hits: dict[str, dict[str, int]] = field(default_factory=dict)
    text_hits: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    startup_s: float | None = None
    failures: list[str] = field(default_factory=list)

    def add(self, group: str, scores: dict[str, bool], text_scores: dict[str, bool]) -> None:
        """Count one receipt in its group and in the "all" group."""
        for counted_group in (group, "all"):
            self.counts[counted_group] = self.counts.get(counted_group, 0) + 1
            for table, values in ((self.hits, scores), (self.text_hits, text_scores)):
                row = table.setdefault(counted_group, dict.fromkeys(SCORED_FIELDS, 0))
                for name, hit in values.items():
                    row[name] += int(hit)


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile (fraction in (0, 1]) of values."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def build_engines(names: list[str], work_dir: Path) -> dict[str, tuple[OcrEngine, float | None]]:
    engines: dict[str, tuple[OcrEngine, float | None]] = {}
    for name in names:
        if name in TESSERACT_SETTINGS:
            engines[name] = (tesseract_engine(TESSERACT_SETTINGS[name], work_dir), None)
        elif name in RAPIDOCR_SETTINGS:
            engines[name] = rapidocr_engine(RAPIDOCR_SETTINGS[name])
        else:
            raise SystemExit(f"unknown setting {name!r}: choose from {', '.join(all_setting_names())}")
    return engines


def all_setting_names() -> list[str]:
    names = list(TESSERACT_SETTINGS)
    if rapidocr_available():
        names += list(RAPIDOCR_SETTINGS)
    return names


def measure(receipts: list[Receipt], names: list[str], log: Callable[[str], None] = print) -> list[SettingResult]:
    """Run every setting on every receipt, rotating the order, and score the fields."""
    with tempfile.TemporaryDirectory(prefix="ocr-accuracy-") as work:
        engines = build_engines(names, Path(work))
        results = {name: SettingResult(name, startup_s=engines[name][1]) for name in names}
        # One untimed run each, so that imports and model loading stay out of the times.
        for engine, _ in engines.values():
            engine(receipts[0].path)

        for index, receipt in enumerate(receipts):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                engine, _ = engines[name]
                started = time.perf_counter()
                try:
                    text = engine(receipt.path)
                except RuntimeError as exc:
                    results[name].failures.append(str(exc))
                    text = ""
                results[name].times_s.append(time.perf_counter() - started)
                results[name].add(receipt.group, score_fields(extract_fields(text), receipt.truth), score_text(text, receipt.truth))
            log(f"  OCR {index + 1}/{len(receipts)} {receipt.name}")
    return [results[name] for name in names]


def markdown_table(results: list[SettingResult], groups: list[str], labels: dict[str, str]) -> str:
    header = ["setting"]
    for group in groups:
        header += [f"{labels[group]}: date", "total", "company", "currency", "in text (d/t/c/cur)"]
    header += ["OCR s median", "p95"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in results:
        row = [result.name + (" (default)" if _is_default(result.name) else "")]
        for group in groups:
            count = result.counts.get(group, 0)
            hits = result.hits.get(group, dict.fromkeys(SCORED_FIELDS, 0))
            text_hits = result.text_hits.get(group, dict.fromkeys(SCORED_FIELDS, 0))
            row += [f"{hits[name]}/{count}" for name in SCORED_FIELDS]
            row.append("/".join(str(text_hits[name]) for name in SCORED_FIELDS))
        row += [f"{statistics.median(result.times_s):.2f}", f"{percentile(result.times_s, 0.95):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _is_default(name: str) -> bool:
    return TESSERACT_SETTINGS.get(name) == DEFAULT_OCR_SETTINGS


def as_json(results: list[SettingResult]) -> list[dict]:
    return [
        {
            "setting": result.name,
            "counts": result.counts,
            "hits": result.hits,
            "text_hits": result.text_hits,
            "ocr_median_s": statistics.median(result.times_s),
            "ocr_p95_s": percentile(result.times_s, 0.95),
            "startup_s": result.startup_s,
            "failures": result.failures,
        }
        for result in results
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extra-receipts", type=Path, default=DEFAULT_EXTRA_DIR,
        help="folder with more sroie_*.jpg receipts and their .fields.json (skipped when missing)",
    )  # fmt: skip
    parser.add_argument("--settings", help=f"comma-separated settings to compare (default: all of {', '.join(all_setting_names())})")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    names = args.settings.split(",") if args.settings else all_setting_names()
    receipts = load_receipts(args.extra_receipts)
    groups = ["bundled", "all"] if any(receipt.group == "extra" for receipt in receipts) else ["bundled"]
    labels = {
        "bundled": f"bundled ({sum(receipt.group == 'bundled' for receipt in receipts)})",
        "all": f"all ({len(receipts)})",
    }
    print(f"{len(receipts)} receipts, settings: {', '.join(names)}", file=sys.stderr)

    results = measure(receipts, names, log=lambda line: print(line, file=sys.stderr))
    print(markdown_table(results, groups, labels))
    if args.json:
        args.json.write_text(json.dumps(as_json(results), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
