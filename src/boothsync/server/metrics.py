"""Prometheus metrics of the server, read from its counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from boothsync.server.index import Index
from boothsync.server.tus_endpoint import UploadCounters


class ServerCollector(Collector):
    """Exports the upload counters and the index totals."""

    def __init__(self, counters: UploadCounters, index: Index) -> None:
        self.counters = counters
        self.index = index

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.counters
        yield CounterMetricFamily("boothsync_server_uploads_created", "Uploads created.", value=c.created)
        yield CounterMetricFamily("boothsync_server_uploads_completed", "Uploads verified and filed.", value=c.completed)
        yield CounterMetricFamily("boothsync_server_upload_bytes_received", "Body bytes written to uploads.", value=c.bytes_received)
        yield CounterMetricFamily(
            "boothsync_server_checksum_mismatches", "Chunks or parts rejected for a checksum mismatch.", value=c.checksum_mismatches
        )
        yield CounterMetricFamily("boothsync_server_client_disconnects", "Request bodies cut short by the client.", value=c.disconnects)
        counts = self.index.counts()
        yield GaugeMetricFamily("boothsync_server_captures", "Captures in the index.", value=counts["captures"])
        yield GaugeMetricFamily("boothsync_server_parts_synced", "Parts verified and filed.", value=counts["parts_synced"])


def render(registry: CollectorRegistry) -> bytes:
    """Return the registry in the Prometheus text format."""
    return generate_latest(registry)
