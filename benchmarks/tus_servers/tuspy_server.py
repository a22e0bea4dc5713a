"""Serve a directory as a tus 1.0 upload endpoint at /files/ with tuspyserver.

Usage: benchmarks/.venv-peers/bin/python tuspy_server.py --dir DIR --port PORT

tuspyserver's router is mounted in a FastAPI app and served by uvicorn with
one worker. Like boothsync's server, uvicorn logs no line per request here,
and it picks uvloop and httptools when they are installed (setup.sh installs
``uvicorn[standard]`` into the peers' venv, as boothsync depends on it too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router

# The same limit as the benchmark gives boothsync: 64 GiB.
MAX_UPLOAD_BYTES = 64 * 1024**3


def build_app(files_dir: Path) -> FastAPI:
    """Return a FastAPI app with tuspyserver's router at /files, storing into ``files_dir``."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    router = create_tus_router(prefix="files", files_dir=str(files_dir), max_size=MAX_UPLOAD_BYTES)
    app.include_router(router)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="Directory for upload bytes and info files.")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(build_app(args.dir), host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
