"""The measures of one uploader run, and the markdown table that compares runs.

Every run is reduced to the same record before it is measured. For each
capture the record has its class, its capture time, when its original was
synced, when the whole capture was synced and how many of its bytes the
server acknowledged. For the run it has the link's counters and the
uploader's sent and re-sent bytes. All times
are wall-clock seconds (time.time()) on this one machine, so the agent's
journal times and this process's times compare directly.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from plan import BLACKOUT, CAP_BYTES_PER_S, DROP_EVERY_S, MIB

# A receipt captured this close before the blackout could be held up by it even
# when the uploader meets the 3 s target, so it is left out of "outside blackouts".
RECEIPT_TARGET_S = 3.0
GOODPUT_TARGET = 0.85


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def subtract(intervals: list[tuple[float, float]], cut: tuple[float, float]) -> list[tuple[float, float]]:
    left: list[tuple[float, float]] = []
    for start, end in intervals:
        if end <= cut[0] or start >= cut[1]:
            left.append((start, end))
            continue
        if start < cut[0]:
            left.append((start, cut[0]))
        if end > cut[1]:
            left.append((cut[1], end))
    return left


def total(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"n": len(values), "median": statistics.median(values), "p90": p90, "max": max(values)}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Compute the measures of one run record (see the module docstring)."""
    items = run["items"]
    link_start = run["link_start"]
    blackout = (link_start + BLACKOUT[0], link_start + BLACKOUT[1])
    complete = [i for i in items if i["capture_synced_at"] is not None]
    first_capture = min(i["captured_at"] for i in items)

    # Uploads are pending while at least one capture is captured and not yet fully synced.
    pending = union([(i["captured_at"], i["capture_synced_at"] or run["ended_at"]) for i in items])
    active = subtract(pending, blackout)
    active_s = total(active)
    bytes_acked = sum(i["bytes_acked"] for i in items)
    goodput = bytes_acked / active_s if active_s > 0 else 0.0

    ticks = 0
    for start, end in pending:
        k = math.floor((start - link_start) / DROP_EVERY_S) + 1
        while link_start + k * DROP_EVERY_S <= end:
            tick = k * DROP_EVERY_S
            if not BLACKOUT[0] < tick < BLACKOUT[1]:
                ticks += 1
            k += 1
    drops = run["link"]["drops"]

    video = next(i for i in items if i["klass"] == "media")
    video_window = (video["captured_at"], video["original_synced_at"] or run["ended_at"])
    receipts = [i for i in items if i["klass"] == "receipt" and video_window[0] <= i["captured_at"] <= video_window[1]]
    clear = [
        i for i in receipts
        if not (blackout[0] - RECEIPT_TARGET_S <= i["captured_at"] < blackout[1])
    ]

    before = [i for i in clear if i["captured_at"] < blackout[0]]
    after = [i for i in clear if i["captured_at"] >= blackout[1]]

    def waits(selection: list[dict[str, Any]], key: str) -> list[float]:
        return [i[key] - i["captured_at"] for i in selection if i[key] is not None]

    drain_end = max((i["capture_synced_at"] for i in complete), default=None)
    originals_end = max((i["original_synced_at"] for i in items if i["original_synced_at"] is not None), default=None)
    summary = {
        "name": run["name"],
        "captures": len(items),
        "captures_synced": len(complete),
        "bytes_acked": bytes_acked,
        "pending_s": total(pending),
        "active_s": active_s,
        "goodput_bps": goodput,
        "goodput_share": goodput / CAP_BYTES_PER_S,
        "bytes_sent": run["bytes_sent"],
        "bytes_resent": run["bytes_resent"],
        "link_drops": drops,
        "drop_ticks": ticks,
        "resent_per_drop": run["bytes_resent"] / drops if drops else None,
        "resent_per_tick": run["bytes_resent"] / ticks if ticks else None,
        "link_bytes_up": run["link"]["bytes_up"],
        "wire_overhead": run["link"]["bytes_up"] - bytes_acked,
        "receipts_during_video": len(receipts),
        "receipt_original_clear": _spread(waits(clear, "original_synced_at")),
        "receipt_original_before": _spread(waits(before, "original_synced_at")),
        "receipt_original_after": _spread(waits(after, "original_synced_at")),
        "receipt_original_all": _spread(waits(receipts, "original_synced_at")),
        "receipt_capture_clear": _spread(waits(clear, "capture_synced_at")),
        "drain_s": drain_end - first_capture if drain_end is not None and len(complete) == len(items) else None,
        "originals_drain_s": originals_end - first_capture if originals_end is not None else None,
        "video_intake_s": video["acknowledged_at"] - video["captured_at"] if "acknowledged_at" in video else None,
        "video_original_s": video["original_synced_at"] - video["captured_at"] if video["original_synced_at"] else None,
    }
    summary["targets"] = {
        "goodput": summary["goodput_share"] >= GOODPUT_TARGET,
        "resent": summary["resent_per_drop"] is not None and summary["resent_per_drop"] <= run["chunk_bytes"],
        "receipts": (summary["receipt_original_clear"]["median"] is not None
                     and summary["receipt_original_clear"]["median"] <= RECEIPT_TARGET_S),
    }
    return summary


def judge_drain(summaries: list[dict[str, Any]]) -> None:
    """Mark each agent run's drain time against the baseline's, in place."""
    baseline = next((s for s in summaries if s["name"] == "baseline"), None)
    for summary in summaries:
        if summary["name"] == "baseline":
            continue
        if baseline is None or baseline["drain_s"] is None or summary["drain_s"] is None:
            summary["targets"]["drain"] = None
        else:
            summary["targets"]["drain"] = summary["drain_s"] <= baseline["drain_s"]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _mark(met: bool | None) -> str:
    if met is None:
        return ""
    return " (met)" if met else " (missed)"


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """Return one column per run and one row per measure, with each target marked met or missed."""
    def row(label: str, cells: list[str]) -> str:
        return "| " + label + " | " + " | ".join(cells) + " |"

    names = [s["name"] for s in summaries]
    lines = [row("measure", names), "| --- |" + " --- |" * len(names)]

    def cells(render) -> list[str]:
        return [render(s) for s in summaries]

    lines.append(row("captures synced", cells(lambda s: f"{s['captures_synced']} of {s['captures']}")))
    lines.append(row("bytes acknowledged by the server", cells(lambda s: f"{s['bytes_acked'] / 1e6:.1f} MB")))
    lines.append(row("pending time outside the blackout", cells(lambda s: _seconds(s["active_s"]))))
    lines.append(row(
        "goodput, share of the 1,000,000 B/s cap (target >= 85%)",
        cells(lambda s: f"{s['goodput_share'] * 100:.1f}%{_mark(s['targets']['goodput'])}"),
    ))
    lines.append(row("bytes put on the wire in PATCH bodies", cells(lambda s: f"{s['bytes_sent'] / 1e6:.1f} MB")))
    lines.append(row("bytes re-sent", cells(lambda s: f"{s['bytes_resent'] / 1e6:.2f} MB")))
    lines.append(row(
        "bytes the link delivered to the server beyond those acknowledged (requests, manifests, discarded bodies)",
        cells(lambda s: f"{s['wire_overhead'] / 1e6:.2f} MB"),
    ))
    lines.append(row("connections reset by the link (drops)", cells(lambda s: str(s["link_drops"]))))
    lines.append(row(
        "re-sent per drop (target <= one 1 MiB chunk)",
        cells(lambda s: "n/a" if s["resent_per_drop"] is None
              else f"{s['resent_per_drop'] / MIB:.2f} MiB{_mark(s['targets']['resent'])}"),
    ))
    lines.append(row(
        "re-sent per drop tick (drop_every_s ticks while pending)",
        cells(lambda s: "n/a" if s["resent_per_tick"] is None
              else f"{s['resent_per_tick'] / MIB:.2f} MiB over {s['drop_ticks']} ticks"),
    ))
    lines.append(row(
        "receipt original synced after capture, outside the blackout: median (target <= 3 s)",
        cells(lambda s: _seconds(s["receipt_original_clear"]["median"]) + _mark(s["targets"]["receipts"])),
    ))
    lines.append(row(
        "... p90 / max, receipts counted",
        cells(lambda s: f"{_seconds(s['receipt_original_clear']['p90'])} / {_seconds(s['receipt_original_clear']['max'])},"
              f" {s['receipt_original_clear']['n']}"),
    ))
    lines.append(row(
        "... captured before the blackout: median / max",
        cells(lambda s: f"{_seconds(s['receipt_original_before']['median'])} / {_seconds(s['receipt_original_before']['max'])}"),
    ))
    lines.append(row(
        "... captured after the blackout: median / max",
        cells(lambda s: f"{_seconds(s['receipt_original_after']['median'])} / {_seconds(s['receipt_original_after']['max'])}"),
    ))
    lines.append(row(
        "receipt original, all receipts during the video: median / max",
        cells(lambda s: f"{_seconds(s['receipt_original_all']['median'])} / {_seconds(s['receipt_original_all']['max'])}"),
    ))
    lines.append(row(
        "receipt fully synced (original, thumbnail, OCR text), outside the blackout: median / max",
        cells(lambda s: f"{_seconds(s['receipt_capture_clear']['median'])} / {_seconds(s['receipt_capture_clear']['max'])}"),
    ))
    lines.append(row("video capture acknowledged by the agent after (intake of 200 MB)",
                     cells(lambda s: _seconds(s["video_intake_s"]))))
    lines.append(row("video original synced after its capture", cells(lambda s: _seconds(s["video_original_s"]))))
    lines.append(row("last original synced, from the first capture", cells(lambda s: _seconds(s["originals_drain_s"]))))
    lines.append(row(
        "drain: last capture fully synced, from the first capture (target <= baseline)",
        cells(lambda s: _seconds(s["drain_s"]) + _mark(s["targets"].get("drain"))),
    ))
    return "\n".join(lines)
