"""Shadow mode's parts on their own: label extraction, the label cap, the capture ring, the monitor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.errors import UpstreamError
from service.shadow.capture import FILES_PER_RECORD, CaptureLimits, CaptureRing, FlaggedImage
from service.shadow.labels import (
    HASHED_LABEL_PREFIX,
    MAX_LABEL_CHARS,
    OTHER_LABEL,
    LabelCap,
    LabelExtractor,
    LabelSpecError,
    bounded_label,
    bounded_vendor_label,
    label_key,
)
from service.shadow.monitor import SHADOW_REQUEST_SUFFIX, ShadowConfig, ShadowJob, ShadowMetrics, ShadowMonitor
from service.upstream import UpstreamResult


@pytest.mark.parametrize(
    ("spec", "prediction", "expected"),
    [
        ("label", {"label": 3, "probabilities": [0.1]}, "3"),
        ("label", {"label": "cat"}, "cat"),
        ("label", {"label": 2.0}, "2"),
        ("label", {"label": 2.5}, None),
        ("label", {"label": True}, None),
        ("label", {"probabilities": [0.1, 0.9]}, None),
        ("argmax:probabilities", {"probabilities": [0.1, 0.7, 0.2]}, "1"),
        ("argmax:probabilities", {"probabilities": [0.5, 0.5]}, "0"),  # ties: the first, as numpy
        ("argmax:probabilities", {"probabilities": []}, None),
        ("argmax:probabilities", {"probabilities": [0.1, "x"]}, None),
        ("argmax:probabilities", {"probabilities": [float("nan"), 0.1]}, None),
        ("argmax:", [0.2, 0.3, 0.1], "1"),
        ("", 7, "7"),
        ("outputs.0.class", {"outputs": [{"class": "dog"}]}, "dog"),
        ("outputs.1.class", {"outputs": [{"class": "dog"}]}, None),
        ("outputs.0", {"outputs": {"0": 4}}, "4"),  # a digit segment is also a key in an object
    ],
)
def test_label_extractor_reads_paths_and_argmax(spec: str, prediction: Any, expected: str | None) -> None:
    extractor = LabelExtractor.parse(spec)
    assert extractor(prediction) == expected
    value = extractor.read(prediction)  # the same label with the vendor's type
    assert (value is None) == (expected is None)
    assert value is None or (label_key(value) == expected and type(value) in (int, float, str))


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [({"label": 9}, 9), ({"label": "9"}, "9"), ({"label": 9.0}, 9.0), ({"label": ""}, None), ({"label": None}, None)],
)
def test_label_extractor_reads_the_vendors_type(prediction: Any, expected: Any) -> None:
    value = LabelExtractor.parse("label").read(prediction)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "label",
    [
        "x" * (MAX_LABEL_CHARS + 1),
        "x" * 200_000,
        "a\nb",
        "tab\there",
        "\x00",
        "\x1b[31mred",
        "bidi\u202eevil",
        "lone \ud800 surrogate",
        "zero\u200bwidth",
    ],
)
def test_long_or_unprintable_labels_become_a_short_stable_hash(label: str) -> None:
    bounded = bounded_label(label)
    assert bounded.startswith(HASHED_LABEL_PREFIX) and len(bounded) == len(HASHED_LABEL_PREFIX) + 12
    assert bounded == bounded_label(label)  # stable: the same label gives the same series
    assert bounded.isprintable() and bounded != bounded_label(label + "x")
    assert bounded_vendor_label(label) == bounded


@pytest.mark.parametrize("label", ["7", "cat", "ankle boot", "x" * MAX_LABEL_CHARS, "Ärmel", "猫"])
def test_short_printable_labels_pass_unchanged(label: str) -> None:
    assert bounded_label(label) == label and bounded_vendor_label(label) == label


def test_a_vendor_label_keeps_its_type_unless_its_text_is_too_long() -> None:
    assert bounded_vendor_label(9) == 9 and bounded_vendor_label(9.0) == 9.0 and bounded_vendor_label(None) is None
    assert bounded_vendor_label(10 ** (MAX_LABEL_CHARS - 1)) == 10 ** (MAX_LABEL_CHARS - 1)  # 64 digits
    assert bounded_vendor_label(10**MAX_LABEL_CHARS) == bounded_label(str(10**MAX_LABEL_CHARS))  # 65 digits


@pytest.mark.parametrize("spec", ["a..b", "a.b c", "x.$y", "argmax:a-.[0]"])
def test_label_extractor_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(LabelSpecError):
        LabelExtractor.parse(spec)


def test_label_cap_keeps_the_first_labels_and_folds_the_rest() -> None:
    cap = LabelCap(2)
    assert [cap(x) for x in ["a", "b", "c", "a", "d", "b"]] == ["a", "b", OTHER_LABEL, "a", OTHER_LABEL, "b"]
    with pytest.raises(ValueError):
        LabelCap(0)


def _flagged(request_id: str = "req-1", index: int = 0, size: int = 100) -> FlaggedImage:
    return FlaggedImage(request_id, index, b"r" * size, "image/png", b"p" * size, {"label": 1}, {"label": 2}, "1", "2")


def test_capture_writes_the_documented_layout(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "cap", CaptureLimits(min_free_bytes=0))
    folder = ring.write(_flagged("a/b..c"))
    assert folder is not None and folder.parent == tmp_path / "cap"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["raw.png", "purified.png", "raw_response.json", "purified_response.json", "meta.json"]
    )
    assert len(list(folder.iterdir())) == FILES_PER_RECORD
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["request_id"] == "a/b..c" and meta["raw_label"] == "1" and meta["purified_label"] == "2"
    assert "/" not in folder.name.split("_", 1)[1]  # client ids never make paths
    assert json.loads((folder / "raw_response.json").read_text()) == {"label": 1}


def test_a_record_with_a_mask_stores_it_and_counts_its_file(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path, CaptureLimits(max_files=2 * FILES_PER_RECORD + 1, min_free_bytes=0))
    with_mask = dataclasses.replace(_flagged("m"), mask_png=b"mask")
    first = ring.write(with_mask)
    assert first is not None and (first / "mask.png").read_bytes() == b"mask"
    ring.write(_flagged("a"))  # 6 + 5 files: at the limit
    ring.write(_flagged("b"))  # 16 files would pass it: the oldest (with its mask) goes
    assert not first.exists() and ring.record_count() == 2


def test_capture_ring_evicts_oldest_within_file_and_byte_limits(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path, CaptureLimits(max_files=3 * FILES_PER_RECORD, max_bytes=10**9, min_free_bytes=0))
    folders = [ring.write(_flagged(f"r{i}")) for i in range(5)]
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert ring.record_count() == 3 and remaining == sorted(f.name for f in folders[2:] if f)
    by_bytes = CaptureRing(tmp_path / "b", CaptureLimits(max_files=10**6, max_bytes=1000, min_free_bytes=0))
    for i in range(10):
        by_bytes.write(_flagged(f"r{i}", size=150))
    assert 0 < by_bytes.total_bytes() <= 1000
    assert sum(f.stat().st_size for f in (tmp_path / "b").rglob("*") if f.is_file()) <= 1000
    assert by_bytes.write(_flagged(size=2000)) is None and not by_bytes.disabled  # too big: skipped, not fatal


def test_capture_ring_resumes_its_accounting_after_a_restart(tmp_path: Path) -> None:
    limits = CaptureLimits(max_files=2 * FILES_PER_RECORD, min_free_bytes=0)
    first = CaptureRing(tmp_path, limits)
    first.write(_flagged("a"))
    first.write(_flagged("b"))
    (tmp_path / ".tmp-crashed").mkdir()  # a write cut by a crash
    second = CaptureRing(tmp_path, limits)
    assert second.record_count() == 2 and not (tmp_path / ".tmp-crashed").exists()
    second.write(_flagged("c"))
    assert len(list(tmp_path.iterdir())) == 2


def test_capture_ring_skips_records_deleted_by_hand_and_corrects_its_accounting(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path, CaptureLimits(max_files=3 * FILES_PER_RECORD, max_bytes=10**9, min_free_bytes=0))
    first, second, third = (ring.write(_flagged(f"r{i}")) for i in range(3))
    assert first and second and third
    shutil.rmtree(first)  # the oldest, as an analyst would after looking at it
    shutil.rmtree(third)  # and one that is not next in line
    fourth = ring.write(_flagged("r3"))
    assert fourth is not None and not ring.disabled
    # Both gone records left the accounting; the one still there was not pushed out in their place.
    assert ring.record_count() == 2 and sorted(tmp_path.iterdir()) == [second, fourth]
    assert ring.total_bytes() == sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    for i in range(4, 8):  # and the ring goes on evicting as before
        assert ring.write(_flagged(f"r{i}")) is not None
    assert ring.record_count() == 3 and len(list(tmp_path.iterdir())) == 3 and not ring.disabled


def test_capture_disables_itself_on_io_errors_and_never_raises(tmp_path: Path) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    ring = CaptureRing(target, CaptureLimits(min_free_bytes=0))
    assert ring.disabled and ring.write(_flagged()) is None
    writable = CaptureRing(tmp_path / "gone", CaptureLimits(min_free_bytes=0))
    (tmp_path / "gone").rmdir()
    assert writable.write(_flagged()) is None and writable.disabled


def test_capture_keeps_free_space_in_reserve(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path, CaptureLimits(min_free_bytes=2**62))  # more than any disk has free
    assert ring.write(_flagged()) is None and not ring.disabled and ring.record_count() == 0


class _ScriptedUpstream:
    """Answers `predict` with labels from a script, records calls; can block or fail."""

    def __init__(self, labels: list[Any], fail: bool = False) -> None:
        self.labels = labels
        self.fail = fail
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def predict(
        self, blobs: list[bytes], request_id: str, content_type: str, *, timeout_s: float | None = None
    ) -> UpstreamResult:
        self.calls.append(request_id)
        await self.release.wait()
        if self.fail:
            raise UpstreamError("vendor down")
        return UpstreamResult([{"label": label} for label in self.labels[: len(blobs)]], 200, 0.0)


def _monitor(upstream: Any, tmp_path: Path | None = None, **config: Any) -> tuple[ShadowMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    capture = CaptureRing(tmp_path, CaptureLimits(min_free_bytes=0)) if tmp_path else None
    monitor = ShadowMonitor(
        ShadowConfig(**config),
        upstream,
        LabelExtractor.parse("label"),
        ShadowMetrics(registry),
        capture=capture,
        rng=random.Random(0),
    )
    return monitor, registry


def _job(purified_labels: list[Any], request_id: str = "req") -> ShadowJob:
    n = len(purified_labels)
    return ShadowJob(request_id, [b"raw"] * n, "image/png", [b"pur"] * n, [{"label": x} for x in purified_labels])


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_monitor_counts_agreements_and_disagreements_by_label_pair(tmp_path: Path) -> None:
    upstream = _ScriptedUpstream([7, 7, 3])
    monitor, registry = _monitor(upstream, tmp_path, rate=1.0)
    assert monitor.submit(_job([1, 7, 3]))
    await monitor.wait_idle()
    assert upstream.calls == ["req" + SHADOW_REQUEST_SUFFIX]
    assert _value(registry, "zipgate_shadow_comparisons_total", raw_label="7") == 2  # by the raw image's label
    assert _value(registry, "zipgate_shadow_comparisons_total", raw_label="3") == 1
    assert _value(registry, "zipgate_shadow_disagreements_total", raw_label="7", purified_label="1") == 1
    assert _value(registry, "zipgate_shadow_captured_total") == 1
    (record,) = list(tmp_path.iterdir())
    assert json.loads((record / "meta.json").read_text())["image_index"] == 0


async def test_monitor_bounds_vendor_labels_before_metrics_and_capture(tmp_path: Path) -> None:
    long_raw, unprintable = "7" * 200_000, "evil\r\n# TYPE fake counter"
    upstream = _ScriptedUpstream([long_raw, unprintable])
    monitor, registry = _monitor(upstream, tmp_path, rate=1.0)
    monitor.submit(_job([1, unprintable]))
    await monitor.wait_idle()
    hashed_raw = bounded_label(long_raw)
    assert _value(registry, "zipgate_shadow_comparisons_total", raw_label=hashed_raw) == 1
    assert _value(registry, "zipgate_shadow_disagreements_total", raw_label=hashed_raw, purified_label="1") == 1
    # The same unprintable label on both sides: compared in full, one agreement, under its hash.
    assert _value(registry, "zipgate_shadow_comparisons_total", raw_label=bounded_label(unprintable)) == 1
    assert _value(registry, "zipgate_shadow_disagreements_total", raw_label=bounded_label(unprintable)) == 0
    (record,) = list(tmp_path.iterdir())
    meta = json.loads((record / "meta.json").read_text())
    assert (meta["raw_label"], meta["purified_label"]) == (hashed_raw, "1")
    assert json.loads((record / "raw_response.json").read_text()) == {"label": long_raw}  # the evidence, whole


async def test_monitor_counts_unlabelled_answers_and_failures_without_raising() -> None:
    monitor, registry = _monitor(_ScriptedUpstream([None, 2]), rate=1.0)
    monitor.submit(_job([1, 2]))
    await monitor.wait_idle()
    assert _value(registry, "zipgate_shadow_unlabelled_total") == 1
    assert _value(registry, "zipgate_shadow_comparisons_total", raw_label="2") == 1
    failing, failing_registry = _monitor(_ScriptedUpstream([1], fail=True), rate=1.0)
    failing.submit(_job([1]))
    await failing.wait_idle()
    assert _value(failing_registry, "zipgate_shadow_failures_total") == 1


async def test_monitor_drops_instead_of_queueing_when_busy_or_loaded() -> None:
    upstream = _ScriptedUpstream([1])
    upstream.release.clear()
    monitor, registry = _monitor(upstream, rate=1.0, max_inflight=2)
    assert monitor.submit(_job([1])) and monitor.submit(_job([1]))
    assert not monitor.submit(_job([1]))
    assert _value(registry, "zipgate_shadow_dropped_total", reason="busy") == 1
    upstream.release.set()
    await monitor.wait_idle()
    loaded = ShadowMonitor(
        ShadowConfig(rate=1.0),
        upstream,
        LabelExtractor.parse("label"),
        ShadowMetrics(registry2 := CollectorRegistry()),
        under_load=lambda: True,
    )
    assert not loaded.submit(_job([1]))
    assert _value(registry2, "zipgate_shadow_dropped_total", reason="load") == 1


async def test_monitor_close_cancels_work_in_flight() -> None:
    upstream = _ScriptedUpstream([1])
    upstream.release.clear()
    monitor, registry = _monitor(upstream, rate=1.0)
    monitor.submit(_job([2]))
    await asyncio.sleep(0)
    await monitor.close()
    assert not [m for m in registry.collect() if m.name == "zipgate_shadow_comparisons" and m.samples]
    assert not monitor.submit(_job([2]))
    assert _value(registry, "zipgate_shadow_dropped_total", reason="closed") == 1


def test_sampling_follows_the_rate_and_the_header_only_when_allowed() -> None:
    upstream = _ScriptedUpstream([1])
    off, _ = _monitor(upstream, rate=0.0)
    assert not any(off.sampled(None) for _ in range(100)) and not off.sampled("1")
    allowed, _ = _monitor(upstream, rate=0.0, allow_header=True)
    assert allowed.sampled("1") and not allowed.sampled("0")
    quarter, _ = _monitor(upstream, rate=0.25)
    share = sum(quarter.sampled(None) for _ in range(4000)) / 4000
    assert 0.22 < share < 0.28  # seeded rng: a fixed outcome, within a binomial 5-sigma band anyway


def test_the_alarm_reads_disagreements_off_a_gateways_metrics_text() -> None:
    from prometheus_client import generate_latest

    from service.shadow.alarm import AlarmRule, disagreements_by_raw_label

    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    metrics.disagreements.labels("0", "3").inc(15)
    metrics.disagreements.labels("0", "5").inc(6)
    metrics.disagreements.labels("6", "2").inc(4)
    counts = disagreements_by_raw_label(generate_latest(registry).decode())
    assert counts == {"0": 21.0, "6": 4.0}
    assert AlarmRule().suspected_target(counts) == "0"
    assert AlarmRule(min_count=22).suspected_target(counts) is None
