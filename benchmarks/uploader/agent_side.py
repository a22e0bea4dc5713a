"""Drive a real boothsync agent through the schedule and collect what it reports.

The feeder posts each planned file to the agent's ``POST /v1/captures`` (raw
body, ``?class=&filename=``) at its link time, on 127.0.0.1 and not through
the flaky link: capture is local to the stall device. The poller reads
``GET /v1/status`` once a second until every capture is synced.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from plan import PlannedCapture

log = logging.getLogger("benchmark.agent")

POLL_EVERY_S = 1.0
FEED_BLOCK_BYTES = 1024 * 1024


@dataclass
class FeedRecord:
    """One capture request of the feeder and the agent's response to it."""

    planned: PlannedCapture
    captured_at: float  # wall clock just before the POST was sent
    acknowledged_at: float
    capture_id: str | None
    status_code: int
    error: str | None = None


@dataclass
class AgentObservation:
    """The feeder's records, the status samples and the final captures of one agent run."""

    feed: list[FeedRecord] = field(default_factory=list)
    status_samples: list[dict[str, Any]] = field(default_factory=list)
    captures: list[dict[str, Any]] = field(default_factory=list)
    final_status: dict[str, Any] = field(default_factory=dict)
    drained: bool = False
    feeder_done: threading.Event = field(default_factory=threading.Event)


def feed_agent(agent_url: str, schedule: list[PlannedCapture], link_start: float, observation: AgentObservation) -> None:
    """Post every planned capture at its link time and record the confirmation."""
    with httpx.Client(timeout=120.0, trust_env=False) as client:
        for planned in schedule:
            delay = link_start + planned.at_s - time.time()
            if delay > 0:
                time.sleep(delay)
            captured_at = time.time()
            try:
                with open(planned.path, "rb") as handle:
                    # An iterator of blocks, not one bytes object, because httpx
                    # copies the unsent rest of a bytes body after every send.
                    # For the 200 MB video that cost seconds of CPU in this
                    # process, which also runs the link proxy.
                    response = client.post(
                        agent_url + "/v1/captures", content=iter(lambda: handle.read(FEED_BLOCK_BYTES), b""),
                        params={"class": planned.klass, "filename": planned.filename},
                        headers={"Content-Type": planned.content_type, "Content-Length": str(planned.size)},
                    )
            except httpx.HTTPError as exc:
                log.error("capture failed file=%s: %s", planned.filename, exc)
                observation.feed.append(FeedRecord(planned, captured_at, time.time(), None, 0, str(exc)))
                continue
            acknowledged_at = time.time()
            capture_id = response.json().get("capture_id") if response.status_code == 201 else None
            if capture_id is None:
                log.error("capture rejected file=%s status=%d: %s", planned.filename, response.status_code, response.text[:300])
            observation.feed.append(FeedRecord(
                planned, captured_at, acknowledged_at, capture_id, response.status_code,
                None if capture_id else response.text[:300],
            ))
    observation.feeder_done.set()


def poll_until_drained(agent_url: str, expected: int, observation: AgentObservation, deadline: float) -> None:
    """Sample the status once a second until ``expected`` captures are synced or the deadline passes."""
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        while time.time() < deadline:
            try:
                status = client.get(agent_url + "/v1/status").json()
            except httpx.HTTPError as exc:
                log.warning("status request failed: %s", exc)
                time.sleep(POLL_EVERY_S)
                continue
            observation.status_samples.append({
                "at": time.time(),
                "link": status["link"],
                "bytes_sent": status["bytes_sent"],
                "bytes_resent": status["bytes_resent"],
                "goodput_bps": status["goodput_bps"],
                "pending_bytes": status["pending"]["bytes"],
                "synced": status["synced"],
                "captures": status["captures"],
            })
            observation.final_status = status
            if observation.feeder_done.is_set() and status["synced"] >= expected:
                observation.drained = True
                return
            time.sleep(POLL_EVERY_S)


def collect_captures(agent_url: str, observation: AgentObservation) -> None:
    """Read every fed capture with its parts (state, size, synced_at) from ``GET /v1/captures/{id}``."""
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        observation.final_status = client.get(agent_url + "/v1/status").json()
        for record in observation.feed:
            if record.capture_id is None:
                continue
            capture = client.get(f"{agent_url}/v1/captures/{record.capture_id}").json()
            capture.pop("audit", None)
            observation.captures.append(capture)


def server_part_states(server_url: str, capture_ids: list[str]) -> dict[str, int]:
    """Count the parts of the given captures by their state on the server."""
    counts: dict[str, int] = {}
    wanted = set(capture_ids)
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        captures = client.get(server_url + "/v1/captures", params={"limit": 10_000}).json()["captures"]
    for capture in captures:
        if capture["capture_id"] not in wanted:
            continue
        for part in capture["parts"]:
            counts[part["state"]] = counts.get(part["state"], 0) + 1
    return counts
