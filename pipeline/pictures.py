"""Pictures in the Prefect UI: PNGs published to a static HTTP server on 127.0.0.1, linked by URL.

The Prefect UI is a page served over http: it cannot load ``file://`` images, and its markdown
renders no ``data:`` URI. So artifacts link pictures served by a small static file server that
``scripts/prefect_server.sh`` starts and stops beside the Prefect server. It is configured in one
place, the environment that script prints (the flows' worker, ``python -m flows.serve``, needs it):

- ``EDGEFILL_PICTURES_URL``: the server's base URL, e.g. ``http://127.0.0.1:4201``;
- ``EDGEFILL_PICTURES_DIR``: the folder it serves.

:func:`picture_markdown` is what an artifact uses: with the server configured it copies the PNG
into that folder under a content-addressed name (``<sha256, 16 hex>-<file name>``: one file per
distinct picture, so a link never changes meaning and republishing is free) and returns
``![alt](URL)``; without it, the picture's path as text.

``python -m pipeline.pictures --dir DIR --port PORT`` runs the server: PNG files of DIR only (no
listing, nothing else), ``GET /health`` answers ``ok``, bound to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import urllib.parse
from pathlib import Path

from pydantic import BaseModel, field_validator

from pipeline.atomic_io import atomic_write_bytes

URL_ENV = "EDGEFILL_PICTURES_URL"
DIR_ENV = "EDGEFILL_PICTURES_DIR"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PictureServer(BaseModel):
    """Where published pictures go (``root``) and the base URL that serves that folder."""

    url: str
    root: Path

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{URL_ENV} must be an http(s) URL, got {url!r}")
        return url.rstrip("/")

    @classmethod
    def from_env(cls) -> "PictureServer | None":
        """The server the environment names, or None when ``EDGEFILL_PICTURES_URL`` is unset."""
        url = os.environ.get(URL_ENV)
        if not url:
            return None
        root = os.environ.get(DIR_ENV)
        if not root:
            raise ValueError(f"{URL_ENV} is set but {DIR_ENV} is not: set both "
                             "(scripts/prefect_server.sh start prints them)")
        return cls(url=url, root=Path(root))


def publish_picture(path: str | Path, server: PictureServer) -> str:
    """Copy PNG ``path`` into the served folder (content-addressed name) and return its URL."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file (only PNG pictures are published)")
    name = f"{hashlib.sha256(data).hexdigest()[:16]}-{path.name}"
    dest = server.root / name
    if not dest.is_file():
        atomic_write_bytes(dest, data)
    return f"{server.url}/{urllib.parse.quote(name)}"


def picture_markdown(path: str | Path, alt: str) -> str:
    """``![alt](URL)`` of the published picture when the picture server is configured
    (:meth:`PictureServer.from_env`), else ``alt: `path` `` as text."""
    server = PictureServer.from_env()
    alt = alt.replace("[", "(").replace("]", ")")
    if server is None:
        return f"{alt}: `{Path(path).resolve()}`"
    return f"![{alt}]({publish_picture(path, server)})"


class _PictureHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder's PNG files and ``/health``; 404 for anything else (no listing)."""

    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif urllib.parse.urlsplit(self.path).path.lower().endswith(".png"):
            super().do_GET()
        else:
            self.send_error(404)

    def do_HEAD(self) -> None:
        if urllib.parse.urlsplit(self.path).path.lower().endswith(".png"):
            super().do_HEAD()
        else:
            self.send_error(404)

    def list_directory(self, path):  # noqa: ANN001 - http.server's signature
        self.send_error(404)
        return None

    def end_headers(self) -> None:
        if self.path != "/health":  # content-addressed names never change content
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass


def serve(root: Path, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``root``'s PNG files on ``host:port`` until killed."""
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_PictureHandler, directory=str(root))
    with http.server.ThreadingHTTPServer((host, port), handler) as server:
        server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pictures", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="folder of published pictures")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve(args.dir, args.port, args.host)


if __name__ == "__main__":
    main()
