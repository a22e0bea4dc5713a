"""The ``boothsync`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
import uvicorn

from boothsync import __version__
from boothsync.config import AgentSettings, ConfigError, ServerSettings, load_settings
from boothsync.datalock import DataDirLockedError
from boothsync.logs import configure_logging

app = typer.Typer(help="Capture at the stall, sync to HQ.", no_args_is_help=True, add_completion=False)
agent_app = typer.Typer(help="The agent that runs on a stall device.", no_args_is_help=True)
server_app = typer.Typer(help="The ingest server at HQ.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(server_app, name="server")

def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"boothsync {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)] = False,
) -> None:
    """Capture at the stall, sync to HQ."""


ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", help="TOML file with \\[agent] and \\[server] tables.", exists=True, dir_okay=False)
]
HostOption = Annotated[Optional[str], typer.Option(help="Address to listen on.")]
PortOption = Annotated[Optional[int], typer.Option(help="TCP port to listen on.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@agent_app.command("run")
def agent_run(
    data: Annotated[Optional[Path], typer.Option("--data", help="Directory for the journal and blobs.")] = None,
    server: Annotated[Optional[str], typer.Option("--server", help="Base URL of the ingest server.")] = None,
    host: HostOption = None,
    port: PortOption = None,
    hot_folder: Annotated[Optional[Path], typer.Option("--hot-folder", help="Folder a scanner writes into.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the agent: capture API, derivatives and the uploader."""
    from boothsync.agent.service import build_app

    overrides = {"data_dir": data, "server_url": server, "host": host, "port": port, "hot_folder": hot_folder}
    try:
        settings = load_settings(AgentSettings, "agent", config, overrides=overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    _serve(build_app, settings)


def _serve(build_app: Any, settings: AgentSettings | ServerSettings) -> None:
    """Check the data directory and the log level, then run the app until a signal stops it."""
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise _fail(f"--data {settings.data_dir} is a file, not a directory: name a directory for the data")
    try:
        configure_logging()
        app_ = build_app(settings)
    except (ValueError, DataDirLockedError) as exc:
        raise _fail(str(exc)) from None
    # configure_logging() silences uvicorn's access lines, but uvicorn still
    # builds each one before the logger drops it, so they are switched off here.
    uvicorn.run(app_, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=5,
                access_log=False)


@server_app.command("run")
def server_run(
    data: Annotated[Optional[Path], typer.Option("--data", help="Directory for uploads, files and the index.")] = None,
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the ingest server: tus endpoint, manifests, index and metrics."""
    from boothsync.server.app import build_app

    overrides = {"data_dir": data, "host": host, "port": port}
    try:
        settings = load_settings(ServerSettings, "server", config, overrides=overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    _serve(build_app, settings)


@app.command()
def capture(
    files: Annotated[list[Path], typer.Argument(help="Files to capture.", exists=True, dir_okay=False)],
    klass: Annotated[Optional[str], typer.Option("--class", help="Content class: consent, receipt, contract, document or media.")] = None,
    agent: Annotated[str, typer.Option("--agent", help="Base URL of the agent.")] = "http://127.0.0.1:8470",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON confirmation per line.")] = False,
) -> None:
    """Capture files through a running agent and print each local confirmation."""
    _check_agent_url(agent)
    failures = 0
    with httpx.Client(base_url=agent, timeout=120) as client:
        for path in files:
            try:
                with open(path, "rb") as handle:
                    data = {"class": klass} if klass else {}
                    response = client.post("/v1/captures", files={"file": (path.name, handle)}, data=data)
            except httpx.TransportError as exc:
                raise _fail(f"cannot reach the agent at {agent} ({exc}): is 'boothsync agent run' running there?", 1) from None
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code in (404, 405):
                raise _fail(f"{agent} does not look like a boothsync agent ({response.status_code} on POST /v1/captures): check --agent", 1)
            if response.status_code != 201:
                failures += 1
                typer.secho(f"{path}: not captured: {body.get('message', response.text)}", err=True, fg=typer.colors.RED)
                continue
            if as_json:
                typer.echo(json.dumps(body))
            else:
                typer.echo(f"{path}: {body['short_code']}  {body['capture_id']}  {body['class']}  {body['message']}")
    if failures:
        raise typer.Exit(1)


AgentOption = Annotated[str, typer.Option("--agent", help="Base URL of the agent.")]


def _check_agent_url(agent: str) -> None:
    if not agent.startswith(("http://", "https://")):
        raise _fail(f"--agent {agent!r} is not a URL: write it as http://HOST:PORT, for example http://127.0.0.1:8470")


def _agent_call(agent: str, method: str, path: str, body: dict | None = None) -> dict:
    _check_agent_url(agent)
    try:
        response = httpx.request(method, agent.rstrip("/") + path, json=body, timeout=30)
    except httpx.TransportError as exc:
        raise _fail(f"cannot reach the agent at {agent} ({exc}): is 'boothsync agent run' running there?", 1) from None
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        raise _fail(f"the agent rejected the request: {data.get('message', response.text)}", 1)
    return data


@app.command()
def link(
    metered: Annotated[Optional[bool], typer.Option("--metered/--unmetered", help="Mark the link metered (phone hotspot) or unmetered (back at HQ).")] = None,
    event_ended: Annotated[Optional[bool], typer.Option("--event-ended/--event-running", help="Mark the event ended, so after_event parts start.")] = None,
    cap: Annotated[Optional[int], typer.Option("--cap", help="Bandwidth cap for uploads in bytes per second (at least 1024).")] = None,
    no_cap: Annotated[bool, typer.Option("--no-cap", help="Remove the bandwidth cap.")] = False,
    agent: AgentOption = "http://127.0.0.1:8470",
) -> None:
    """Show or change the agent's link settings: metered, event ended, bandwidth cap."""
    changes: dict[str, object] = {}
    if metered is not None:
        changes["metered"] = metered
    if event_ended is not None:
        changes["event_ended"] = event_ended
    if cap is not None and no_cap:
        raise _fail("use either --cap or --no-cap, not both")
    if cap is not None:
        changes["bandwidth_cap_bytes_per_s"] = cap
    if no_cap:
        changes["bandwidth_cap_bytes_per_s"] = None
    control = _agent_call(agent, "POST", "/v1/link", changes) if changes else _agent_call(agent, "GET", "/v1/link")
    cap_text = f"{control['bandwidth_cap_bytes_per_s']:.0f} bytes/s" if control["bandwidth_cap_bytes_per_s"] else "none"
    typer.echo(f"metered: {control['metered']}  event ended: {control['event_ended']}  bandwidth cap: {cap_text}")


@app.command()
def parked(
    retry: Annotated[bool, typer.Option("--retry", help="Queue every parked part again.")] = False,
    agent: AgentOption = "http://127.0.0.1:8470",
) -> None:
    """List parts the server kept rejecting, or queue them again with --retry."""
    if retry:
        result = _agent_call(agent, "POST", "/v1/parked/retry")
        typer.echo(f"{result['requeued']} parked parts queued again")
        return
    entries = _agent_call(agent, "GET", "/v1/parked")["parked"]
    if not entries:
        typer.echo("No parked parts.")
    for entry in entries:
        typer.echo(f"{entry['capture_id']}  {entry['part']}  after {entry['attempts']} attempts: {entry['reason']}")


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    keep: Annotated[Optional[Path], typer.Option("--keep", help="Keep the agent's and server's data in this directory.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to sync.")] = 300.0,
) -> None:
    """Run a server, an agent and a flaky link between them, capture the bundled samples and report."""
    from boothsync.demo import print_report, run_demo

    configure_logging("WARNING")
    report = run_demo(keep=keep, timeout_s=timeout, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    raise typer.Exit(0 if report["ok"] else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
