"""The agent's status: what is safe, what is pending, and the link, in numbers and words."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from boothsync.agent.blobstore import BlobStore
from boothsync.agent.journal import Journal
from boothsync.agent.power import PowerState
from boothsync.agent.scheduler import LinkControl
from boothsync.agent.syncstats import OFFLINE, SyncStats
from boothsync.classes import CONTENT_CLASSES


def build_status(journal: Journal, blobs: BlobStore, stats: SyncStats, *, event: str, device_id: str,
                 control: LinkControl | None = None, power: PowerState | None = None) -> dict[str, Any]:
    """Return the JSON status served at ``/v1/status``.

    power is the agent's current battery state. Without it, the status reports
    no battery and nothing deferred.
    """
    power = power if power is not None else PowerState(battery=None, heavy_deferred=False)
    by_class = journal.pending_by_class()
    pending_items = sum(v["items"] for v in by_class.values())
    pending_bytes = sum(v["bytes"] for v in by_class.values())
    oldest = journal.oldest_unflushed_at()
    states = journal.state_counts()
    eta = pending_bytes / stats.goodput_bps if stats.goodput_bps > 0 else None
    return {
        "event": event,
        "device_id": device_id,
        "link": stats.link_state,
        "captures": sum(states.values()),
        "synced": states.get("synced", 0),
        "states": states,
        "pending": {
            "items": pending_items,
            "bytes": pending_bytes,
            "by_class": {k: by_class.get(k, {"items": 0, "bytes": 0}) for k in CONTENT_CLASSES},
        },
        "parked_parts": journal.parked_count(),
        "link_control": vars(control) if control is not None else None,
        "oldest_unflushed_s": round(time.time() - oldest, 3) if oldest is not None else 0.0,
        "estimated_sync_s": round(eta, 1) if eta is not None else None,
        "goodput_bps": round(stats.goodput_bps),
        "bytes_sent": stats.bytes_sent,
        "bytes_resent": stats.bytes_resent,
        "disk_free_bytes": blobs.free_bytes(),
        "last_error": stats.last_error,
        "power": power.as_status(),
        "last_capture_error": stats.last_capture_error,
        "message": _message(states, stats.link_state, sum(states.values()) - states.get("synced", 0))
        + _attention_note(journal.parked_count(), stats.last_capture_error)
        + _power_note(power),
    }


def _message(states: dict[str, int], link: str, unsynced: int) -> str:
    if unsynced == 0:
        return "All synced." if states else "Nothing captured yet."
    noun = "item" if unsynced == 1 else "items"
    if link == OFFLINE:
        return f"Offline: {unsynced} {noun} safe on this device, waiting for the network."
    return f"Syncing: {unsynced} {noun} safe on this device, on the way to HQ."


def _attention_note(parked: int, capture_error: str | None) -> str:
    """Return what the operator must act on: parts HQ rejects, or captures the device rejects."""
    note = ""
    if parked:
        noun = "part was" if parked == 1 else "parts were"
        note += f" Action needed: {parked} {noun} rejected by HQ; see 'boothsync parked'."
    if capture_error:
        note += f" New captures are being rejected: {capture_error}"
    return note


def _power_note(power: PowerState) -> str:
    if not power.heavy_deferred or power.battery is None:
        return ""
    return (
        f" Battery at {power.battery.percent:.0f}%: new captures get thumbnails only,"
        " and their OCR text and barcodes are left for HQ."
    )


class AgentCollector(Collector):
    """Exports the status as Prometheus metrics."""

    def __init__(self, journal: Journal, blobs: BlobStore, stats: SyncStats) -> None:
        self.journal = journal
        self.blobs = blobs
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        items = GaugeMetricFamily("boothsync_agent_pending_items", "Captures with parts not yet synced.", labels=["class"])
        size = GaugeMetricFamily("boothsync_agent_pending_bytes", "Bytes not yet synced.", labels=["class"])
        by_class = self.journal.pending_by_class()
        for name in CONTENT_CLASSES:
            entry = by_class.get(name, {"items": 0, "bytes": 0})
            items.add_metric([name], entry["items"])
            size.add_metric([name], entry["bytes"])
        yield items
        yield size
        oldest = self.journal.oldest_unflushed_at()
        yield GaugeMetricFamily(
            "boothsync_agent_oldest_unflushed_seconds", "Age of the oldest capture not yet synced.",
            value=time.time() - oldest if oldest is not None else 0.0,
        )
        link = GaugeMetricFamily("boothsync_agent_link_state", "1 for the current link state.", labels=["state"])
        for state in ("online", "degraded", "offline"):
            link.add_metric([state], 1.0 if self.stats.link_state == state else 0.0)
        yield link
        s = self.stats
        yield CounterMetricFamily("boothsync_agent_bytes_sent", "Chunk bytes put on the wire.", value=s.bytes_sent)
        yield CounterMetricFamily("boothsync_agent_bytes_resent", "Chunk bytes sent more than once.", value=s.bytes_resent)
        yield CounterMetricFamily("boothsync_agent_parts_synced", "Parts the server verified.", value=s.parts_synced)
        yield GaugeMetricFamily("boothsync_agent_goodput_bytes_per_second", "Smoothed acknowledged bytes per second.", value=s.goodput_bps)
        yield GaugeMetricFamily("boothsync_agent_parked_parts", "Parts parked after repeated rejection.", value=self.journal.parked_count())
        yield GaugeMetricFamily("boothsync_agent_disk_free_bytes", "Free bytes on the data disk.", value=self.blobs.free_bytes())
