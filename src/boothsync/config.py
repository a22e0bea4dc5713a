"""Settings for the agent and the server, from defaults, a TOML file and the environment.

Precedence, lowest first: the defaults below, the ``[agent]`` or ``[server]``
table of the TOML file, environment variables named
``BOOTHSYNC_<SECTION>_<FIELD>`` (for example ``BOOTHSYNC_AGENT_PORT``), and
command-line options. docs/configuration.md lists every setting; a test
keeps that page and these classes in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from boothsync.classes import CONTENT_CLASSES, SYNC_POLICIES


class ConfigError(ValueError):
    """Raised when a setting in a file or the environment is invalid."""


class _SettingError(ConfigError):
    """A ConfigError about one setting; load_settings adds where the value came from."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class AgentSettings:
    """Settings of the agent that runs on a stall device."""

    data_dir: Path = Path("boothsync-agent")
    server_url: str = "http://127.0.0.1:8480"
    host: str = "127.0.0.1"
    port: int = 8470
    event: str = "default"
    device_id: str = ""
    disk_reserve_bytes: int = 100 * 1024 * 1024
    direct_io: bool = True
    chunk_bytes: int = 1024 * 1024
    chunk_min_bytes: int = 64 * 1024
    chunk_max_bytes: int = 16 * 1024 * 1024
    chunk_target_s: float = 2.0
    sync_streams: int = 2
    aging_s: float = 600.0
    bandwidth_cap_bytes_per_s: int = 0
    link_metered: bool = True
    policy_consent: str = "immediate"
    policy_receipt: str = "immediate"
    policy_contract: str = "immediate"
    policy_document: str = "immediate"
    policy_media: str = "immediate"
    policy_derivatives: str = "immediate"
    upstream: str = "boothsync"
    upload_path: str = "/files/"
    max_rejected_attempts: int = 5
    hot_folder: Path | None = None
    hot_folder_settle_s: float = 2.0
    thumbnail_px: int = 320
    thumbnail_format: str = "jpeg"
    ocr_timeout_s: float = 60.0
    ocr_max_pages: int = 1
    derivative_workers: int = 1
    battery_defer_percent: int = 20
    retry_base_s: float = 0.5
    retry_max_s: float = 5.0
    offline_after_failures: int = 3
    request_timeout_s: float = 30.0


@dataclass
class ServerSettings:
    """Settings of the ingest server at HQ."""

    data_dir: Path = Path("boothsync-server")
    host: str = "127.0.0.1"
    port: int = 8480
    max_upload_bytes: int = 20 * 1024**3
    upload_expiry_s: int = 7 * 24 * 3600
    fsync_every_patch: bool = False
    direct_io: bool = True
    cors_origins: str = "*"


Settings = TypeVar("Settings", AgentSettings, ServerSettings)

SECTIONS = ("agent", "server")


def load_settings(
    cls: type[Settings],
    section: str,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``cls`` from its defaults, then the TOML file, the environment and ``overrides``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        for name, value in _read_toml_section(config_file, section).items():
            values[name] = value
            sources[name] = f"in {config_file}"
    env = os.environ if environ is None else environ
    prefix = f"BOOTHSYNC_{section.upper()}_"
    for name in _field_names(cls):
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = raw
            sources[name] = f"from {prefix + name.upper()}"
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "from the command line"
    try:
        return cls(**_coerce_all(cls, values, section))
    except _SettingError as exc:
        source = sources.get(exc.name, "")
        raise ConfigError(f"{exc} ({source})" if source else str(exc)) from None


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _read_toml_section(path: Path, section: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8 text: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown table [{unknown[0]}] in {path}: use {' or '.join(f'[{s}]' for s in SECTIONS)}")
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] in {path} must be a table, not {type(table).__name__}")
    return table


def _coerce_all(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    known = set(_field_names(cls))
    result: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(
                f"unknown setting {section}.{name}: see docs/configuration.md for the list"
            )
        label = f"{section}.{name}"
        try:
            result[name] = _coerce(hints[name], value, label)
            _check_range(name, result[name], label)
            _check_text(name, result[name], label)
        except ConfigError as exc:
            raise _SettingError(name, str(exc)) from None
    return result


_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_text(name: str, value: Any, label: str) -> None:
    """Reject text settings that would make every request to the server fail later."""
    if name in ("event", "device_id") and value and not _SLUG.match(value):
        raise ConfigError(
            f"invalid value {value!r} for {label}: use 1 to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    if name == "server_url" and not value.startswith(("http://", "https://")):
        raise ConfigError(f"invalid value {value!r} for {label}: use a URL that starts with http:// or https://")
    if name == "upload_path" and not (value.startswith("/") and value.endswith("/")):
        raise ConfigError(f"invalid value {value!r} for {label}: use a path that starts and ends with '/'")
    if name == "data_dir" and str(value) in ("", "."):
        raise ConfigError(f"invalid value {str(value)!r} for {label}: name a directory for the data")


def _coerce(hint: Any, value: Any, label: str) -> Any:
    """Convert a value to the field's type, or raise ConfigError.

    Text (from the environment or the command line) is parsed. Any other
    value (from TOML) must already have the field's type, so that
    ``port = 8470.9`` or ``event = ["a"]`` is an error, not a guess.
    """
    optional = hint in (Path | None, str | None)
    if optional and (value is None or value == ""):
        return None
    expected = _TYPE_NAMES.get(hint, str(hint))
    if isinstance(value, str):
        try:
            return _parse_text(hint, value)
        except ValueError:
            raise ConfigError(f"invalid value {value!r} for {label}: expected {expected}") from None
    if not _has_type(hint, value):
        raise ConfigError(f"invalid value {value!r} for {label}: expected {expected}")
    return float(value) if hint is float else value


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", Path: "a path",
               Path | None: "a path", str: "text", str | None: "text"}


def _parse_text(hint: Any, text: str) -> Any:
    if hint is bool:
        return _parse_bool(text)
    if hint is int:
        return int(text.strip())
    if hint is float:
        return float(text.strip())
    if hint in (Path, Path | None):
        return Path(text)
    return text


def _has_type(hint: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return hint is bool
    if hint is int:
        return isinstance(value, int)
    if hint is float:
        return isinstance(value, (int, float))
    if hint in (Path, Path | None):
        return isinstance(value, Path)
    return False


# Inclusive bounds of numeric settings; a value outside them is a mistake
# that would otherwise show up later as a hang or a crashed task.
_RANGES: dict[str, tuple[float, float]] = {
    "port": (1, 65535),
    "disk_reserve_bytes": (0, float("inf")),
    "chunk_bytes": (1024, 1024**3),
    "chunk_min_bytes": (1024, 1024**3),
    "chunk_max_bytes": (1024, 1024**3),
    "chunk_target_s": (0.05, 600),
    "sync_streams": (1, 16),
    "aging_s": (1, 10**9),
    "bandwidth_cap_bytes_per_s": (0, float("inf")),
    "max_rejected_attempts": (1, 1000),
    "hot_folder_settle_s": (0, 3600),
    "thumbnail_px": (16, 4096),
    "ocr_timeout_s": (0.1, 3600),
    "ocr_max_pages": (1, 1000),
    "derivative_workers": (1, 64),
    "battery_defer_percent": (0, 100),
    "retry_base_s": (0.001, 3600),
    "retry_max_s": (0.001, 86400),
    "offline_after_failures": (1, 1000),
    "request_timeout_s": (0.1, 3600),
    "max_upload_bytes": (1, float("inf")),
    "upload_expiry_s": (1, float("inf")),
}


_CHOICES: dict[str, tuple[str, ...]] = {
    "upstream": ("boothsync", "tus"),
    "thumbnail_format": ("jpeg", "webp"),
    **{f"policy_{name}": SYNC_POLICIES for name in (*CONTENT_CLASSES, "derivatives")},
}


def _check_range(name: str, value: Any, label: str) -> None:
    choices = _CHOICES.get(name)
    if choices is not None and value not in choices:
        raise ConfigError(f"invalid value {value!r} for {label}: use one of {', '.join(choices)}")
    bounds = _RANGES.get(name)
    if bounds is None or value is None:
        return
    low, high = bounds
    if not low <= value <= high:
        upper = "" if high == float("inf") else f" and at most {_number(high)}"
        raise ConfigError(f"invalid value {value!r} for {label}: must be at least {_number(low)}{upper}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def settings_field_names() -> dict[str, list[str]]:
    """Return every setting's name by section, for documentation checks."""
    return {"agent": _field_names(AgentSettings), "server": _field_names(ServerSettings)}


__all__ = [
    "AgentSettings",
    "ConfigError",
    "ServerSettings",
    "load_settings",
    "settings_field_names",
]
