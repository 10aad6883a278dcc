"""Flagged payloads for forensics: a bounded ring of disagreement records on disk.

Layout (one folder per flagged image, named so that `sorted()` is oldest first):

    <capture_dir>/<UTC time, 20261130T221500.123456Z>_<request id>_<image index>/
        raw.<png|jpg|…>         the image as the client sent it (its own format)
        purified.png            what the vendor was sent instead
        mask.png                METHOD=local: the suspicion mask (white = repainted as suspect), when known
        raw_response.json       the vendor's answer for the raw image (one prediction)
        purified_response.json  the vendor's answer for the purified image (one prediction)
        meta.json               request id, time, image index, both labels (bounded, as in the metrics:
                                `service.shadow.labels.bounded_label`)

A record is written into a hidden temporary folder and renamed into place, so an analyst never
sees half a record. An analyst may delete record folders by hand: the ring notices at its next
eviction, drops them from its accounting, and goes on. This stores user images: see the README's
privacy note.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import shutil
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILES_PER_RECORD = 5  # without a mask; a record with mask.png has one more (each is counted as it is)
_TMP_PREFIX = ".tmp-"
RAW_STEM = "raw"
PURIFIED_FILE = "purified.png"
MASK_FILE = "mask.png"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CaptureLimits:
    """Bounds of the ring: the oldest records go first when a new one would pass either."""

    max_files: int = 5_000
    max_bytes: int = 256 * 1024 * 1024
    min_free_bytes: int = 512 * 1024 * 1024  # never take the disk below this, whatever the ring allows


@dataclass(frozen=True)
class FlaggedImage:
    """One disagreement, as captured."""

    request_id: str
    index: int
    raw_image: bytes
    raw_media_type: str
    purified_png: bytes
    raw_prediction: Any
    purified_prediction: Any
    raw_label: str
    purified_label: str
    mask_png: bytes | None = None  # METHOD=local: the suspicion mask of the purified image


class CaptureRing:
    """Writes `FlaggedImage`s under a folder, evicting the oldest to stay within `CaptureLimits`.

    The first I/O error (disk full, read-only, the capture folder gone) disables capture for the
    life of the process: the gateway keeps serving, and the log and `disabled` say why. A record
    folder that is already gone (an analyst deleted it) is no error: it leaves the accounting when
    an eviction comes due. Thread-safe, as records are written from worker threads.
    """

    def __init__(self, directory: Path, limits: CaptureLimits = CaptureLimits()) -> None:
        self.directory = directory
        self.limits = limits
        self.disabled_reason: str | None = None
        self._lock = threading.Lock()
        self._records: list[tuple[Path, int, int]] = []  # (folder, bytes, files), oldest first
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob(f"{_TMP_PREFIX}*"):  # a crash mid-write leaves these
                shutil.rmtree(stale, ignore_errors=True)
            self._records = [
                (folder, *_folder_size(folder)) for folder in sorted(directory.iterdir()) if folder.is_dir()
            ]
        except OSError as exc:
            self._disable(f"cannot open {directory}: {exc}")

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    def record_count(self) -> int:
        with self._lock:
            return len(self._records)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size, _ in self._records)

    def write(self, flagged: FlaggedImage, now: datetime | None = None) -> Path | None:
        """Store one record; returns its folder, or None when capture is (or just became) disabled."""
        now = now or datetime.now(UTC)
        files = _record_files(flagged, now)
        size = sum(len(data) for data in files.values())
        if size > self.limits.max_bytes or self.limits.max_files < len(files):
            logger.warning(
                "shadow capture skipped a record larger than its limits (%d bytes)",
                size,
                extra={"request_id": flagged.request_id},
            )
            return None
        with self._lock:
            if self.disabled:
                return None
            try:
                if shutil.disk_usage(self.directory).free - size < self.limits.min_free_bytes:
                    logger.warning(
                        "shadow capture skipped a record: the disk is nearly full",
                        extra={"request_id": flagged.request_id},
                    )
                    return None
                self._evict_for(size, len(files))
                name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}_{_safe(flagged.request_id)}_{flagged.index}"
                tmp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
                tmp.mkdir()
                for filename, data in files.items():
                    (tmp / filename).write_bytes(data)
                folder = self.directory / name
                tmp.rename(folder)
            except OSError as exc:
                self._disable(f"writing to {self.directory} failed: {exc}")
                return None
            self._records.append((folder, size, len(files)))
            return folder

    def _evict_for(self, incoming_bytes: int, incoming_files: int) -> None:
        if not self._over_limits(incoming_bytes, incoming_files):
            return
        # Records deleted by hand still count until now: drop them first, so that they do not push
        # out records that are still there (and no eviction trips on a folder that is gone).
        self._records = [record for record in self._records if record[0].is_dir()]
        while self._records and self._over_limits(incoming_bytes, incoming_files):
            folder, _, _ = self._records.pop(0)
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:  # deleted by hand since the check above: already evicted
                logger.info("shadow capture: record %s was already gone", folder.name)

    def _over_limits(self, incoming_bytes: int, incoming_files: int) -> bool:
        files = sum(count for _, _, count in self._records) + incoming_files
        size = sum(size for _, size, _ in self._records) + incoming_bytes
        return files > self.limits.max_files or size > self.limits.max_bytes

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        logger.error("shadow capture disabled: %s; the gateway keeps serving", reason)


def _record_files(flagged: FlaggedImage, now: datetime) -> dict[str, bytes]:
    meta = {
        "request_id": flagged.request_id,
        "time": now.isoformat(),
        "image_index": flagged.index,
        "raw_label": flagged.raw_label,
        "purified_label": flagged.purified_label,
    }
    files = {
        f"{RAW_STEM}{_extension(flagged.raw_media_type)}": flagged.raw_image,
        PURIFIED_FILE: flagged.purified_png,
        "raw_response.json": _json(flagged.raw_prediction),
        "purified_response.json": _json(flagged.purified_prediction),
        META_FILE: _json(meta),
    }
    if flagged.mask_png is not None:
        files[MASK_FILE] = flagged.mask_png
    return files


def _extension(media_type: str) -> str:
    return mimetypes.guess_extension(media_type.split(";")[0].strip()) or ".bin"


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=str).encode()


def _safe(request_id: str) -> str:
    """Request ids come from clients: keep only characters that are safe in a file name."""
    kept = "".join(c if c.isalnum() or c in "-_" else "-" for c in request_id)
    return kept[:64] or "none"


def _folder_size(folder: Path) -> tuple[int, int]:
    """Bytes and files of one record folder."""
    sizes = [f.stat().st_size for f in folder.iterdir() if f.is_file()]
    return sum(sizes), len(sizes)


# --- reading the ring back (the /ui page of captures) ------------------------------------------


@dataclass(frozen=True)
class CapturedRecord:
    """One record as stored, for display: what `_record_files` wrote."""

    name: str  # the folder's name
    request_id: str
    time: str  # ISO 8601, UTC
    image_index: int
    raw_label: str
    purified_label: str
    raw_file: str  # the raw image's file name (its extension is the client's format)
    raw_response: str  # the vendor's answers, as stored (JSON text)
    purified_response: str
    has_mask: bool = False  # mask.png is there (METHOD=local)


def captured_records(directory: Path) -> list[str]:
    """The names of the complete records under `directory`, newest first ([] when there is none)."""
    try:
        names = [entry.name for entry in directory.iterdir() if entry.is_dir()]
    except OSError:
        return []
    return sorted((name for name in names if not name.startswith(_TMP_PREFIX)), reverse=True)


def record_file(directory: Path, name: str, filename: str) -> Path | None:
    """The path of a record's raw, purified or mask image, or None: only names that `captured_records` lists
    and only those files are ever resolved, so a name from a URL cannot reach outside the folder."""
    if name not in captured_records(directory):
        return None
    folder = directory / name
    if filename in (PURIFIED_FILE, MASK_FILE) or (filename.startswith(f"{RAW_STEM}.") and "/" not in filename):
        path = folder / filename
        return path if path.is_file() else None
    return None


def read_record(directory: Path, name: str) -> CapturedRecord | None:
    """A record's metadata and answers; None when it is gone (evicted meanwhile) or unreadable."""
    if name not in captured_records(directory):
        return None
    folder = directory / name
    try:
        meta = json.loads((folder / META_FILE).read_text())
        raw_files = sorted(p.name for p in folder.glob(f"{RAW_STEM}.*"))
        return CapturedRecord(
            name=name,
            request_id=str(meta["request_id"]),
            time=str(meta["time"]),
            image_index=int(meta["image_index"]),
            raw_label=str(meta["raw_label"]),
            purified_label=str(meta["purified_label"]),
            raw_file=raw_files[0],
            raw_response=(folder / "raw_response.json").read_text(),
            purified_response=(folder / "purified_response.json").read_text(),
            has_mask=(folder / MASK_FILE).is_file(),
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
