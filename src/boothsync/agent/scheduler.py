"""The choice of the next part to send: class priority with aging, sync policies and preemption.

A part's score is its class rank (consent 0 ... media 4), minus one rank
for every ``aging_s`` seconds it has waited. The lowest score goes first, so
a part of a low class that has waited long enough overtakes new parts of
higher classes and is never starved. A part being sent yields at the next
chunk boundary to a waiting part whose score is lower by at least one rank.

A derivative (thumbnail, OCR text) ranks half a class better than its
original, but never better than half a class after the last urgent class
(consent and receipt), so 1.5 at best. Thumbnails and OCR texts of
contracts, documents and media thus go before those originals ("thumbnails
now, full resolution later"), while the originals of consent forms and
receipts do not wait behind a backlog of derivatives, for example after a
blackout. Aging still applies: a derivative that has waited ``aging_s / 2``
longer than a receipt original goes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from boothsync.agent.journal import PartToUpload
from boothsync.classes import CONTENT_CLASSES, PRIORITY, SYNC_POLICIES

IMMEDIATE, UNMETERED, AFTER_EVENT, LOCAL_ONLY = SYNC_POLICIES
POLICIES = SYNC_POLICIES

DERIVATIVE_BONUS = 0.5
# Classes whose originals go before every derivative.
URGENT_CLASSES = ("consent", "receipt")
DERIVATIVE_BEST_RANK = max(PRIORITY[name] for name in URGENT_CLASSES) + DERIVATIVE_BONUS
PREEMPT_MARGIN = 1.0


class PolicyError(ValueError):
    """Raised for a sync policy name that does not exist."""


def check_policy(name: str, label: str) -> str:
    if name not in POLICIES:
        raise PolicyError(f"invalid sync policy {name!r} for {label}: use one of {', '.join(POLICIES)}")
    return name


@dataclass
class LinkControl:
    """The operator's settings for the link and the event."""

    metered: bool = True
    event_ended: bool = False
    bandwidth_cap_bytes_per_s: float | None = None


PartKey = tuple[str, str]


def key_of(part: PartToUpload) -> PartKey:
    return (part.capture_id, part.part)


class Scheduler:
    """Orders parts; all decisions are pure functions of the parts, the control and the clock."""

    def __init__(
        self,
        original_policies: dict[str, str],
        derivative_policy: str = IMMEDIATE,
        aging_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.original_policies = {k: check_policy(original_policies.get(k, IMMEDIATE), f"class {k}") for k in CONTENT_CLASSES}
        self.derivative_policy = check_policy(derivative_policy, "derivatives")
        self.aging_s = aging_s
        self.clock = clock

    def policy_of(self, part: PartToUpload) -> str:
        if part.part == "original":
            return self.original_policies[part.klass]
        return self.derivative_policy

    def eligible(self, part: PartToUpload, control: LinkControl) -> bool:
        """Return True when the part's sync policy lets it start now."""
        policy = self.policy_of(part)
        if policy == IMMEDIATE:
            return True
        if policy == UNMETERED:
            return not control.metered
        if policy == AFTER_EVENT:
            return control.event_ended
        return False

    def score(self, part: PartToUpload, now: float) -> float:
        waited = max(0.0, now - part.captured_at)
        rank: float = PRIORITY[part.klass]
        if part.part != "original":
            rank = max(rank - DERIVATIVE_BONUS, DERIVATIVE_BEST_RANK)
        return rank - waited / self.aging_s

    def pick(self, parts: Iterable[PartToUpload], busy: set[PartKey], control: LinkControl) -> PartToUpload | None:
        """Return the eligible part with the lowest score that no stream is sending."""
        now = self.clock()
        best: PartToUpload | None = None
        best_score = float("inf")
        for part in parts:
            if key_of(part) in busy or not self.eligible(part, control):
                continue
            score = self.score(part, now)
            if score < best_score or (score == best_score and best is not None and part.capture_id < best.capture_id):
                best, best_score = part, score
        return best

    def preempting(self, current: PartToUpload, parts: Iterable[PartToUpload], busy: set[PartKey],
                   control: LinkControl) -> PartToUpload | None:
        """Return a waiting part important enough to pause ``current`` for, or None."""
        if not self.eligible(current, control):
            # The operator changed the policy or the link: stop at this chunk.
            return current
        challenger = self.pick(parts, busy | {key_of(current)}, control)
        if challenger is None:
            return None
        now = self.clock()
        if self.score(challenger, now) <= self.score(current, now) - PREEMPT_MARGIN:
            return challenger
        return None
