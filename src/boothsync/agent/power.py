"""Battery state of the device and whether heavy derivatives wait for HQ.

On battery below ``agent.battery_defer_percent``, the agent still makes
thumbnails but leaves OCR and barcode decoding to HQ. The battery is read with
psutil (tested with 7.2.2). A probe is any object with a ``read()`` method, so
tests and other platforms can supply their own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("boothsync.agent.power")


@dataclass(frozen=True)
class BatteryReading:
    """Charge in percent (0 to 100) and whether mains power is connected (None when unknown)."""

    percent: float
    plugged: bool | None


class BatteryProbe(Protocol):
    """Source of battery readings. read() returns None when the device has no battery or it cannot be read."""

    def read(self) -> BatteryReading | None: ...


class PsutilBatteryProbe:
    """Battery probe backed by psutil.sensors_battery()."""

    def __init__(self) -> None:
        self._warned = False

    def read(self) -> BatteryReading | None:
        try:
            import psutil
        except ImportError:
            self._warn_once("psutil is not installed, so the battery is not read (install psutil)")
            return None
        sensors_battery = getattr(psutil, "sensors_battery", None)
        if sensors_battery is None:
            self._warn_once("psutil cannot read the battery on this platform")
            return None
        try:
            battery = sensors_battery()
        except (OSError, RuntimeError, NotImplementedError) as exc:
            self._warn_once(f"failed to read the battery: {exc}")
            return None
        if battery is None:
            return None
        return BatteryReading(percent=float(battery.percent), plugged=battery.power_plugged)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)


@dataclass(frozen=True)
class PowerState:
    """A battery reading and the decision it led to."""

    battery: BatteryReading | None
    heavy_deferred: bool

    @property
    def defer_reason(self) -> str | None:
        """Return the reason recorded for a deferred derivative, or None when nothing is deferred."""
        if not self.heavy_deferred or self.battery is None:
            return None
        return f"deferred: battery at {self.battery.percent:.0f}%, left for HQ"

    def as_status(self) -> dict[str, Any]:
        return {
            "battery_percent": None if self.battery is None else round(self.battery.percent, 1),
            "plugged": None if self.battery is None else self.battery.plugged,
            "heavy_derivatives_deferred": self.heavy_deferred,
        }


class PowerPolicy:
    """Rule that decides from the battery whether heavy derivatives are deferred.

    They are deferred when defer_below_percent is above 0, the probe reports a
    battery below it and mains power is not known to be connected. A device
    without a battery never defers. A reading whose plugged state is unknown
    counts as on battery, because a stall device that cannot tell is more
    likely running on its battery.
    """

    def __init__(self, defer_below_percent: int, probe: BatteryProbe | None = None) -> None:
        if not 0 <= defer_below_percent <= 100:
            raise ValueError(f"defer_below_percent must be 0 to 100, got {defer_below_percent}")
        self.defer_below_percent = defer_below_percent
        self.probe: BatteryProbe = probe if probe is not None else PsutilBatteryProbe()
        self._lock = threading.Lock()
        self._last_deferred = False

    def check(self) -> PowerState:
        """Read the battery and return the current state, logging when deferral starts or stops."""
        battery = self.probe.read()
        deferred = (
            self.defer_below_percent > 0
            and battery is not None
            and battery.plugged is not True
            and battery.percent < self.defer_below_percent
        )
        with self._lock:
            changed = deferred != self._last_deferred
            self._last_deferred = deferred
        if changed and deferred:
            log.warning(
                "battery %s (below %d%%): OCR and barcode decoding of new captures are left for HQ",
                _describe(battery), self.defer_below_percent,
            )
        elif changed:
            log.info("heavy derivatives run again: battery %s", _describe(battery))
        return PowerState(battery=battery, heavy_deferred=deferred)


def _describe(battery: BatteryReading | None) -> str:
    if battery is None:
        return "not present"
    plugged = {True: "plugged in", False: "on battery", None: "power source unknown"}[battery.plugged]
    return f"at {battery.percent:.0f}%, {plugged}"
