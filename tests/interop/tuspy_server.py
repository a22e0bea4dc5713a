"""Run tuspyserver on 127.0.0.1 as an upstream for the agent in tests/test_agent_upstreams.py.

Usage: .venv-peers/bin/python tests/interop/tuspy_server.py --port PORT --dir DIR

scripts/setup installs tuspyserver and its FastAPI and uvicorn into
.venv-peers, a venv apart from boothsync's, because tuspyserver's pins of
FastAPI could clash with boothsync's. The tus endpoint is /files/.
tuspyserver keeps each upload in DIR as a file named by its upload id, next
to a ``.info`` JSON file with its metadata and offset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router

HOST = "127.0.0.1"


def create_app(store_dir: Path) -> FastAPI:
    """Create a FastAPI app that serves tuspyserver's router at /files/ and stores into ``store_dir``."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(create_tus_router(prefix="files", files_dir=str(store_dir)))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Run tuspyserver on 127.0.0.1 at /files/.")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on.")
    parser.add_argument("--dir", type=Path, required=True, help="Directory for the uploads and their .info files.")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(args.dir), host=HOST, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
