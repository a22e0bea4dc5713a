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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints


class ConfigError(ValueError):
    """Raised when a setting in a file or the environment is invalid."""


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
    chunk_bytes: int = 1024 * 1024
    hot_folder: Path | None = None
    hot_folder_settle_s: float = 2.0
    thumbnail_px: int = 320
    ocr_timeout_s: float = 60.0
    derivative_workers: int = 1
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
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
    base_path: str = "/files/"


Settings = TypeVar("Settings", AgentSettings, ServerSettings)


def load_settings(
    cls: type[Settings],
    section: str,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``cls`` from its defaults, then the TOML file, the environment and ``overrides``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_toml_section(config_file, section))
    env = os.environ if environ is None else environ
    prefix = f"BOOTHSYNC_{section.upper()}_"
    for name in _field_names(cls):
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = raw
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return cls(**_coerce_all(cls, values, section))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _read_toml_section(path: Path, section: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
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
        result[name] = _coerce(hints[name], value, f"{section}.{name}")
    return result


def _coerce(hint: Any, value: Any, label: str) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    optional = hint in (Path | None, str | None)
    if optional and (value is None or value == ""):
        return None
    try:
        if hint is bool:
            return _parse_bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if hint in (Path, Path | None):
            return Path(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value {value!r} for {label}: expected {hint}") from None


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
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
