"""Check the bundled sample and test data against SHA256SUMS and PROVENANCE.md.

Both data folders contain third-party files that must stay byte-identical to their published
sources, and each file needs a provenance row that names its source and licence. An edited file,
or a file without a SHA256SUMS line or a PROVENANCE.md row, fails these tests.
"""

import hashlib
import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_FOLDERS = {
    "samples": PROJECT_ROOT / "src" / "boothsync" / "samples",
    "tests-data": PROJECT_ROOT / "tests" / "data",
}
INDEX_FILES = {"PROVENANCE.md", "SHA256SUMS"}

# `sha256sum` output: 64 hex digits, a space, then a space (text mode) or `*` (binary mode).
SHA256SUMS_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<path>.+)$")
# A provenance table row starts with the file path in backticks: | `receipt/x.jpg` | 96 KB | ...
PROVENANCE_ROW = re.compile(r"^\| `(?P<path>[^`]+)` \|")


def read_sha256sums(folder: Path) -> dict[str, str]:
    """Parse the folder's SHA256SUMS into {relative path: hex digest}."""
    sums: dict[str, str] = {}
    lines = (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        match = SHA256SUMS_LINE.match(line)
        assert match, f"{folder / 'SHA256SUMS'} line {line_number} is not sha256sum format: {line!r}"
        path = match["path"]
        assert path not in sums, f"{folder / 'SHA256SUMS'} lists {path} twice"
        sums[path] = match["digest"]
    return sums


def read_provenance_paths(folder: Path) -> list[str]:
    """Return the file paths named in the first column of the PROVENANCE.md tables."""
    text = (folder / "PROVENANCE.md").read_text(encoding="utf-8")
    return [match["path"] for line in text.splitlines() if (match := PROVENANCE_ROW.match(line))]


def list_data_files(folder: Path) -> set[str]:
    """Return every file under the folder as a relative POSIX path, without the index files."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(folder).as_posix() not in INDEX_FILES
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(params=sorted(DATA_FOLDERS), ids=sorted(DATA_FOLDERS))
def data_folder(request: pytest.FixtureRequest) -> Path:
    return DATA_FOLDERS[request.param]


def test_sha256sums_match_files(data_folder: Path) -> None:
    sums = read_sha256sums(data_folder)
    assert sums, f"{data_folder / 'SHA256SUMS'} lists no files"

    missing = sorted(path for path in sums if not (data_folder / path).is_file())
    assert not missing, (
        f"files listed in SHA256SUMS but missing from {data_folder}: {missing}. "
        "Restore the files or remove their lines and PROVENANCE.md rows."
    )

    mismatched = sorted(path for path, expected in sums.items() if sha256_of(data_folder / path) != expected)
    assert not mismatched, (
        f"SHA-256 mismatch against SHA256SUMS in {data_folder}: {mismatched}. "
        "Copy the original bytes again from the source named in PROVENANCE.md."
    )


def test_every_file_listed_in_sha256sums(data_folder: Path) -> None:
    unlisted = sorted(list_data_files(data_folder) - read_sha256sums(data_folder).keys())
    assert not unlisted, (
        f"files in {data_folder} without a SHA256SUMS line: {unlisted}. "
        "Add each file's `sha256sum` line (path relative to the folder) and a PROVENANCE.md row."
    )


def test_every_file_listed_in_provenance(data_folder: Path) -> None:
    rows = read_provenance_paths(data_folder)
    assert len(rows) == len(set(rows)), f"{data_folder / 'PROVENANCE.md'} has duplicate rows"

    unlisted = sorted(list_data_files(data_folder) - set(rows))
    assert not unlisted, (
        f"files in {data_folder} without a PROVENANCE.md row: {unlisted}. "
        "Add a table row with size, source repository@commit and path, licence and description."
    )


def test_provenance_rows_name_existing_files(data_folder: Path) -> None:
    stale = sorted(set(read_provenance_paths(data_folder)) - list_data_files(data_folder))
    assert not stale, (
        f"PROVENANCE.md rows in {data_folder} name files that do not exist: {stale}. "
        "Remove the rows or restore the files."
    )
