"""The viewer's HTTP server: one page, its vendored files, Deep Zoom descriptors and tiles made on demand.

The standard library's :class:`http.server.ThreadingHTTPServer` is enough here and adds no
dependency: the server listens on loopback (another host only when asked), serves one user and a
handful of fixed routes, and its work is in the tiles, not in HTTP. Routes (GET; anything else,
``..`` and percent-encoded paths included, is 404, since a path is matched as sent, undecoded):

- ``/``, ``/index.html``, ``/viewer.js``, ``/viewer.css``, ``/openseadragon/openseadragon.min.js``,
  ``/openseadragon/images/NAME.png``: the page and the vendored OpenSeadragon (an allow-list);
- ``/info.json``: the labels' legend (name, colour, pixels, fraction, area), the masked pixels, shape,
  pixel size;
- ``/slide.dzi``, ``/labels.dzi``: Deep Zoom descriptors (same size, tiles and overlap);
- ``/slide_files/LEVEL/COL_ROW.jpg``: slide tiles (JPEG);
- ``/labels_files/LEVEL/COL_ROW.png?hidden=1,3``: label tiles (RGBA PNG; label 0 and the
  ``hidden`` labels transparent, so a toggled label is a new tile URL the browser fetches);
- ``/label?x=X&y=Y``: ``{"x", "y", "label"}``, the level-0 label there (one chunk read).
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from pixseg.errors import ParameterError, PipelineError
from pixseg.view.sources import ReaderCache, label_pyramid, legend, open_output, slide_pyramid
from pixseg.view.tiles import (
    colour_labels,
    dzi_descriptor,
    label_at,
    label_tile,
    slide_tile,
    tile_exists,
    tile_span,
)

logger = logging.getLogger(__name__)

TILE_SIZE = 256
TILE_OVERLAP = 1
#: Tiles made at once; with the bounded read of each (see :mod:`pixseg.view.tiles`) this bounds memory.
MAX_TILE_JOBS = 4
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_STATIC = Path(__file__).parent / "static"
_PAGE_FILES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/viewer.js": "viewer.js",
    "/viewer.css": "viewer.css",
    "/openseadragon/openseadragon.min.js": "openseadragon/openseadragon.min.js",
}
_TILE_ROUTE = re.compile(r"/(slide_files/\d{1,2}/\d{1,7}_\d{1,7}\.jpg|labels_files/\d{1,2}/\d{1,7}_\d{1,7}\.png)")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
#: The page may load only from this server.
_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'"


def static_routes() -> dict[str, Path]:
    """The allow-list of files served as they are: URL path -> file."""
    routes = {route: _STATIC / name for route, name in _PAGE_FILES.items()}
    for image in sorted((_STATIC / "openseadragon" / "images").glob("*.png")):
        routes[f"/openseadragon/images/{image.name}"] = image
    return routes


class ViewerServer(ThreadingHTTPServer):
    """The viewer of one label output over its slide; listening once made (see :func:`make_server`)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, output_path: str, image_path: str | None) -> None:
        self.output = open_output(output_path)
        readers = ReaderCache()
        self.slide = slide_pyramid(self.output, image_path, readers)
        self.labels = label_pyramid(self.output, readers)
        self.colours = self.output.colours
        self.static = static_routes()
        self.info = json.dumps(
            {
                "name": Path(self.output.path.rstrip("/")).name,
                "width": self.output.shape[1],
                "height": self.output.shape[0],
                "pixel_size_um": self.output.pixel_size,
                "labels": legend(self.output),
                "masked_pixels": self.output.masked_pixels,
            }
        ).encode()
        self.tile_jobs = threading.BoundedSemaphore(MAX_TILE_JOBS)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            super().__init__(address, _Handler)
        except OSError as err:
            raise ParameterError(f"cannot listen on {address[0]!r} port {address[1]!r}: {err}") from err

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def accepts_host(self, header: str | None) -> bool:
        """Whether a request's ``Host`` header names this server: on loopback, only loopback names
        (a web page whose domain was rebound to 127.0.0.1 cannot read the slide)."""
        host, port = self.server_address[:2]
        if host not in ("127.0.0.1", "::1"):
            return True
        return header in {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def tile(self, kind: str, level: int, column: int, row: int, hidden: set[int]) -> bytes | None:
        """An encoded tile (``kind`` ``"slide"``: JPEG; ``"labels"``: RGBA PNG), or None if there is none there."""
        if not tile_exists(self.output.shape, level, column, row, tile_size=TILE_SIZE):
            return None
        span = tile_span(self.output.shape, level, column, row, tile_size=TILE_SIZE, overlap=TILE_OVERLAP)
        with self.tile_jobs:
            if kind == "slide":
                return _encode(slide_tile(self.slide, span), "JPEG", quality=90)
            return _encode(colour_labels(label_tile(self.labels, span), self.colours, hidden), "PNG", compress_level=1)


def make_server(output: str, *, image: str | None = None, host: str = "127.0.0.1", port: int = 0) -> ViewerServer:
    """Open a label output and its slide and listen on ``host``:``port`` (call ``serve_forever``).

    Parameters
    ----------
    output : str
        A finished ``pixseg segment`` output (``.zarr`` or ``.tif``).
    image : str, optional
        The slide to show under the labels; by default the input recorded in the output.
    host : str
        The address to listen on: loopback by default; any other is logged as a warning.
    port : int
        0 (default) picks a free port.

    Raises
    ------
    InputNotFoundError
        If the output or the slide does not exist.
    InputError
        If the output is not a finished pixseg label output, or the slide does not fit it.
    ParameterError
        If ``port`` is out of range or the address cannot be listened on.
    """
    if not 0 <= port <= 65535:
        raise ParameterError(f"--port must be 0..65535, got {port!r}")
    if host not in LOOPBACK_HOSTS:
        logger.warning("listening on %r: anyone who can reach this machine there can see the slide and labels", host)
    return ViewerServer((host, port), output_path=output, image_path=image)


def serve(server: ViewerServer, *, open_browser: bool) -> None:
    """Serve until interrupted (Ctrl-C), then close the server; open the page in a browser first if asked."""
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("viewer stopped")
    finally:
        server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if not self.server.accepts_host(self.headers.get("Host")):
            self.send_error(HTTPStatus.FORBIDDEN)
            return
        route, _, query = self.path.partition("?")
        try:
            self._route(route, query)
        except _BadRequest as err:
            self.send_error(HTTPStatus.BAD_REQUEST, str(err))
        except PipelineError as err:  # a slide or label chunk that cannot be decoded
            logger.warning("cannot serve %s: %s", route, err)
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _route(self, route: str, query: str) -> None:
        server = self.server
        if route in server.static:
            path = server.static[route]
            self._send(path.read_bytes(), _CONTENT_TYPES[path.suffix])
        elif route == "/info.json":
            self._send(server.info, "application/json")
        elif route in ("/slide.dzi", "/labels.dzi"):
            kind = "jpg" if route == "/slide.dzi" else "png"
            shape = server.output.shape
            descriptor = dzi_descriptor(shape, tile_size=TILE_SIZE, overlap=TILE_OVERLAP, image_format=kind)
            self._send(descriptor.encode(), "application/xml")
        elif route == "/label":
            x, y = _integers(query, "x"), _integers(query, "y")
            if len(x) != 1 or len(y) != 1:
                raise _BadRequest("expected one x and one y")
            value = label_at(server.labels, x[0], y[0])
            self._send(json.dumps({"x": x[0], "y": y[0], "label": value}).encode(), "application/json")
        elif _TILE_ROUTE.fullmatch(route):
            kind, level, name = route[1:].split("/")
            column, row = (int(n) for n in name.split(".")[0].split("_"))
            tile = server.tile(kind.removesuffix("_files"), int(level), column, row, set(_integers(query, "hidden")))
            if tile is None:
                self.send_error(HTTPStatus.NOT_FOUND)
            else:
                self._send(tile, "image/jpeg" if name.endswith(".jpg") else "image/png")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server calls
        logger.debug("%s - " + format, self.address_string(), *args)


class _BadRequest(Exception):
    """A request's query is malformed (answered 400)."""


def _integers(query: str, name: str) -> list[int]:
    """The comma-separated integers of parameter ``name`` of a query string (``x=3``, ``hidden=1,3``)."""
    try:
        values = parse_qs(query, max_num_fields=4).get(name, [])
        return [int(n) for value in values for n in value.split(",") if n]
    except ValueError as err:
        raise _BadRequest(f"malformed {name!r} in the query") from err


def _encode(pixels: np.ndarray, image_format: str, **options: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()
