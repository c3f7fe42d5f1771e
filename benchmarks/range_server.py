"""A minimal HTTP server of a directory's files that answers byte-range requests with ``os.pread``.

Unlike moto's S3 server (whose ``GetObject`` copies the whole stored object for every request,
ranged or not), a range request here costs only the bytes it asks for, so reading through it
measures pixseg's remote path rather than the server. Used by ``benchmarks.bench_object_storage``
and by ``tests/test_object_storage.py`` (read through fsspec's HTTP filesystem as
``http://127.0.0.1:PORT/name``).

Serves ``GET`` (whole file, or one ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n``) and
``HEAD`` (``Content-Length``, ``ETag``, ``Accept-Ranges``); 404 for anything that is not a
regular file under the root. Counts requests and bytes sent. Run alone (in a process of its own,
so that serving holds no GIL against the reader being measured)::

    python -m benchmarks.range_server ROOT PORT
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlsplit

#: One range of the ``Range`` header (multi-range requests are answered with the whole file).
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Bytes one ``pread`` sends at most (a whole-file GET is sent in pieces of this size).
_PIECE = 2**22


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """Log nothing (the base class writes every request to stderr)."""

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        path = self._local_path()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            start, end = 0, stat.st_size
            match = _RANGE.match(self.headers.get("Range", ""))
            if match and (match.group(1) or match.group(2)):
                first, last = match.groups()
                if first:
                    start, end = int(first), min(int(last) + 1 if last else stat.st_size, stat.st_size)
                else:
                    start = max(0, stat.st_size - int(last))
                if start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{stat.st_size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{stat.st_size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                self._send(fd, start, end)
        finally:
            os.close(fd)

    def _send(self, fd: int, start: int, end: int) -> None:
        position = start
        while position < end:
            data = os.pread(fd, min(_PIECE, end - position), position)
            if not data:
                break
            self.wfile.write(data)
            position += len(data)
        self.server.count(position - start)

    def _local_path(self) -> str | None:
        """The regular file under the server's root that the request names, or None."""
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        root = os.path.realpath(self.server.root)
        path = os.path.realpath(os.path.join(root, relative))
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            return None
        return path


class RangeServer(ThreadingHTTPServer):
    """The files under ``root`` over HTTP on 127.0.0.1 (``port`` 0: a free one), with range requests.

    Use as a context manager to serve from a background thread; :attr:`url` is the base URL,
    :attr:`requests` and :attr:`bytes_sent` count the GET requests answered and their body bytes.
    """

    daemon_threads = True

    def __init__(self, root: str, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.root = root
        self.requests = 0
        self.bytes_sent = 0
        self._counting = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, sent: int) -> None:
        """Record one answered GET of ``sent`` body bytes."""
        with self._counting:
            self.requests += 1
            self.bytes_sent += sent

    def __enter__(self) -> RangeServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


def main(argv: list[str] | None = None) -> int:
    """Serve ``ROOT`` on 127.0.0.1:``PORT`` until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    RangeServer(args.root, args.port).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
