"""Inputs and outputs as URLs (``s3://``, ``gs://``, ``https://``) through fsspec.

Every function here takes a local path or a URL; only URLs reach fsspec. Credentials and the
endpoint come from each filesystem's own chain (for S3: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``); pixseg never
takes them as arguments, so they never reach a log line, a message or an output's metadata.
What pixseg records or prints of a URL is :func:`public_url`: the URL without user, password,
query string or fragment (where signed URLs carry their signature).

Errors: a missing object or bucket, refused credentials, no credentials and an unreachable
endpoint become one-line :class:`~pixseg.errors.InputError` / :class:`~pixseg.errors.OutputError`
messages naming the public URL and the cause (see :func:`remote_errors`); a missing fsspec
backend names the pixseg extra that installs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pixseg.errors import InputError, InputNotFoundError, OutputError, PipelineError

#: A URL: a scheme of two or more letters (a one-letter "scheme" is a Windows drive), then ``://``.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
#: The package each scheme needs, and the pixseg extra that installs it.
_BACKENDS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
}
#: Block size of the file object tifffile parses a remote TIFF's header and IFDs through: each
#: read of a tag fetches at most this much, and only the last block is kept.
HEADER_BLOCK = 2**16
#: Ranges closer than this (bytes) are fetched as one request (the tiles of one tile row of a
#: chunk usually lie back to back), up to :data:`MERGE_BLOCK` bytes a request.
MERGE_GAP = 2**16
MERGE_BLOCK = 2**25
#: Metadata objects that mark a URL as a zarr store where nothing lists prefixes (HTTP).
_STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")
#: S3 error codes, as botocore reports them, that name the cause.
_MISSING_BUCKET = "NoSuchBucket"
#: The S3 error code for a byte range that starts past the end (any range of an empty object).
_EMPTY_RANGE = "InvalidRange"
_BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"})


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL pixseg reads through fsspec (``file://`` counts as local: not a URL)."""
    match = _URL.match(str(path))
    return match is not None and match.group(1).lower() != "file"


def public_url(path: str) -> str:
    """``path`` as pixseg may show and record it: a URL without user, password, query or fragment;
    a local path unchanged."""
    if not is_url(path):
        return path
    parts = urlsplit(path)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def join(base: str, *names: str) -> str:
    """``base`` with ``names`` appended: by ``/`` for a URL, by :func:`os.path.join` for a path."""
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *names)
    return os.path.join(base, *names)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it (fsspec caches the instances).

    Raises
    ------
    InputError
        If the URL carries a user, password, query string or fragment (a signed URL's signature
        would reach logs and metadata), the scheme's backend is not installed (naming the pixseg
        extra), or fsspec knows no such scheme.
    """
    import fsspec.core

    parts = urlsplit(url)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InputError(
            f"URL {public_url(url)!r} carries credentials, a query or a fragment; pixseg takes credentials only "
            "from the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE...) so that none reaches a log or an output"
        )
    scheme = parts.scheme.lower()
    package, extra = _BACKENDS.get(scheme, ("", ""))
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        if not package:
            raise InputError(f"cannot read {public_url(url)!r}: fsspec's backend for {scheme}:// is missing") from err
        raise InputError(f"{scheme}:// URLs need the {package!r} package: pip install 'pixseg-ooc[{extra}]'") from err
    except ValueError as err:  # fsspec: "Protocol not known"
        raise InputError(f"{public_url(url)!r}: fsspec reads no {scheme}:// URLs") from err


@contextlib.contextmanager
def remote_errors(what: str, url: str, *, output: bool = False) -> Iterator[None]:
    """Turn what fsspec and its backends raise for a bad URL into one-line pixseg errors.

    Parameters
    ----------
    what : str
        The action, e.g. ``"cannot read"``; the message is ``{what} {public url!r}: {cause}``.
    url : str
        The URL acted on.
    output : bool
        Raise :class:`~pixseg.errors.OutputError` (else :class:`~pixseg.errors.InputError`, and
        :class:`~pixseg.errors.InputNotFoundError` for a missing object).

    Notes
    -----
    The cause is worded from the error's type and its S3 error code, never copied from the
    backend's text, so no request detail (a signed query, a header) can reach the message.
    """
    try:
        yield
    except PipelineError:
        raise
    except FileNotFoundError as err:
        bucket = urlsplit(url).hostname or ""
        cause = f"bucket {bucket!r} does not exist" if _code(err) == _MISSING_BUCKET else "no such object"
        kind: type[PipelineError] = OutputError if output else InputNotFoundError
        raise kind(f"{what} {public_url(url)!r}: {cause}") from None
    except PermissionError as err:
        cause = "the credentials were refused" if _code(err) in _BAD_CREDENTIALS else "access denied"
        raise _error(
            output, f"{what} {public_url(url)!r}: {cause}; check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)"
        ) from None
    except OSError as err:
        raise _error(output, f"{what} {public_url(url)!r}: {_cause(err)}") from None
    except Exception as err:
        if not _is_backend_error(err):
            raise
        raise _error(output, f"{what} {public_url(url)!r}: {_cause(err)}") from None


def _error(output: bool, message: str) -> PipelineError:
    return OutputError(message) if output else InputError(message)


def _code(err: BaseException) -> str:
    """The S3 error code behind ``err`` (botocore's ``ClientError`` that s3fs chains), or empty."""
    for cause in (err, err.__cause__, err.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _cause(err: BaseException) -> str:
    """A cause worded from ``err``'s type and code alone."""
    name = type(err).__name__
    if name == "NoCredentialsError":
        return "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    if name in ("EndpointConnectionError", "ClientConnectorError", "ConnectTimeoutError", "ServerTimeoutError"):
        return "cannot reach the storage endpoint (check AWS_ENDPOINT_URL and the network)"
    code = _code(err)
    return f"storage error {code or name}"


def _is_backend_error(err: BaseException) -> bool:
    """Whether ``err`` comes from botocore or aiohttp (the backends' own error trees)."""
    module = type(err).__module__.partition(".")[0]
    return module in ("botocore", "aiobotocore", "aiohttp")


def info(url: str, *, output: bool = False) -> dict[str, Any] | None:
    """fsspec's ``info`` of ``url`` (``type`` is ``file`` or ``directory``), or None if nothing is there.

    Raises
    ------
    InputError, OutputError
        For refused credentials, a missing bucket or an unreachable endpoint (see :func:`remote_errors`).
    """
    fs, path = filesystem(url)
    with remote_errors("cannot read", url, output=output):
        try:
            return dict(fs.info(path))
        except FileNotFoundError as err:
            if _code(err) == _MISSING_BUCKET:
                raise
            return None


def exists(path: str) -> bool:
    """Whether something (an object, or objects under the prefix) is at ``path`` (a URL or a path)."""
    if not is_url(path):
        return os.path.lexists(path)
    return info(path) is not None


def is_dir(path: str) -> bool:
    """Whether ``path`` is a directory: a local one, or a URL prefix holding objects (over HTTP,
    where nothing lists a prefix: a URL under which zarr metadata is found)."""
    if not is_url(path):
        return os.path.isdir(path)
    found = info(path)
    if found is not None and found.get("type") == "directory":
        return True
    if urlsplit(path).scheme.lower() not in ("http", "https"):
        return False  # object stores list prefixes: info has said all
    return any(info(join(path, name)) is not None for name in _STORE_MARKERS)


def size(url: str) -> int:
    """The size in bytes of the object at ``url``.

    Raises
    ------
    InputNotFoundError, InputError
        If there is no such object, or it cannot be read.
    """
    found = info(url)
    if found is None:
        raise InputNotFoundError(f"input {public_url(url)!r} does not exist")
    return int(found.get("size") or 0)


def read_bytes(url: str, *, limit: int | None = None) -> bytes | None:
    """The bytes of the object at ``url`` (the first ``limit`` bytes), or None if there is none."""
    fs, path = filesystem(url)
    with remote_errors("cannot read", url):
        try:
            return bytes(fs.cat_file(path, start=0, end=limit) if limit is not None else fs.cat_file(path))
        except FileNotFoundError as err:
            if _code(err) == _MISSING_BUCKET:
                raise
            return None
        except OSError as err:
            if _code(err) == _EMPTY_RANGE:  # a range of an empty object: S3 refuses it
                return b""
            raise


def read_file(path: str, *, limit: int | None = None) -> bytes:
    """The bytes (the first ``limit``) of the local file or the object at ``path``.

    Raises
    ------
    FileNotFoundError
        If nothing is there.
    OSError, InputError
        If it cannot be read.
    """
    if is_url(path):
        data = read_bytes(path, limit=limit)
        if data is None:
            raise FileNotFoundError(public_url(path))
        return data
    with open(path, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit)


def write_bytes(url: str, data: bytes, *, create: bool = False) -> bool:
    """Store ``data`` as the object ``url`` (one PUT: readers see the old or the new object, never part).

    Parameters
    ----------
    create : bool
        Only if no object is there (``If-None-Match: *``); stores that cannot say fall back to
        an existence check first, which races (see docs/storage.md).

    Returns
    -------
    bool
        False when ``create`` and an object was already there (nothing is written).

    Raises
    ------
    OutputError
        If the object cannot be written.
    """
    fs, path = filesystem(url)
    with remote_errors("cannot write", url, output=True):
        if not create:
            fs.pipe_file(path, data)
            return True
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, ValueError):  # a backend without conditional writes
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True


def remove(url: str, *, recursive: bool = False) -> None:
    """Delete the object ``url`` (with ``recursive``, every object under the prefix); nothing there is fine.

    Raises
    ------
    OutputError
        If it cannot be deleted.
    """
    fs, path = filesystem(url)
    with remote_errors("cannot remove", url, output=True), contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


def check_bucket(url: str) -> None:
    """Refuse an output URL whose bucket (the first path part) does not exist or cannot be reached.

    Raises
    ------
    OutputError
        Naming the bucket, or the refused credentials.
    """
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.hostname}" if parts.scheme in ("s3", "s3a", "gs", "gcs") else ""
    if not root:
        raise OutputError(f"cannot write {public_url(url)!r}: pixseg writes only to s3:// and gs:// URLs")
    fs, path = filesystem(root)
    with remote_errors("cannot write", url, output=True):
        try:
            fs.ls(path, detail=False, refresh=True)  # refused credentials show here, before any work
        except FileNotFoundError:
            raise OutputError(f"cannot write {public_url(url)!r}: bucket {parts.hostname!r} does not exist") from None


def identity(url: str) -> dict[str, Any]:
    """What identifies the input at ``url`` for ``--resume``: its public URL and, for an object,
    size and ETag (or modification time); for a prefix (a zarr store), the number of objects
    and a digest of their names, sizes and ETags."""
    fs, path = filesystem(url)
    found = info(url)
    if found is None:
        raise InputNotFoundError(f"input {public_url(url)!r} does not exist")
    if found.get("type") != "directory":
        return {"path": public_url(url), "size": int(found.get("size") or 0), "version": _version(found)}
    with remote_errors("cannot list", url):
        listed = fs.find(path, detail=True)
    entries = sorted(
        (name[len(path) :], int(entry.get("size") or 0), _version(entry)) for name, entry in listed.items()
    )
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
    return {"path": public_url(url), "files": len(entries), "digest": digest}


def _version(entry: dict[str, Any]) -> str:
    """An object's ETag, else its modification time, as text."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "mtime", "updated"):
        if entry.get(key):
            return str(entry[key]).strip('"')
    return ""


def version_token(url: str) -> str:
    """A short token that changes when the object at ``url`` changes (for dask task names)."""
    found = info(url)
    if found is None:
        return "store" if is_dir(url) else ""
    return f"{found.get('size')}-{_version(found)}"


def open_file(url: str) -> Any:
    """A seekable binary file object over the object ``url`` that fetches only what is read, in
    blocks of :data:`HEADER_BLOCK` (for tifffile to parse a TIFF's header and IFDs; pixel data
    is fetched by :class:`RangeSource`).

    Raises
    ------
    InputNotFoundError, InputError
        If the object does not exist or cannot be read.
    """
    fs, path = filesystem(url)
    with remote_errors("cannot read", url):
        return fs.open(path, "rb", block_size=HEADER_BLOCK, cache_type="readahead")


class RangeSource:
    """Byte ranges of the object ``url``, fetched concurrently (``fs.cat_ranges``), neighbouring
    ranges merged into one request (:data:`MERGE_GAP`).

    The remote twin of a local file's positional reads: :class:`pixseg.io.tiff_segments.TiffSegmentReader`
    reads through either. Holds no data between calls: memory is what one call returns.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._fs, self._path = filesystem(url)

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes | memoryview]:
        """The bytes of each ``(offset, count)`` range, in order (empty ranges give ``b""``): views
        into the fetched blocks, not copies.

        Raises
        ------
        InputError
            If the object cannot be read (a message without credentials).
        """
        from fsspec.utils import merge_offset_ranges

        wanted = sorted({(offset, offset + count) for offset, count in ranges if count > 0})
        if not wanted:
            return [b"" for _ in ranges]
        _, starts, ends = merge_offset_ranges(
            [self._path] * len(wanted),
            [start for start, _ in wanted],
            [end for _, end in wanted],
            max_gap=MERGE_GAP,
            max_block=MERGE_BLOCK,
            sort=False,
        )
        with remote_errors("cannot read", self._url):
            fetched = self._fs.cat_ranges([self._path] * len(starts), starts, ends, on_error="raise")
        blocks = [(start, memoryview(data)) for start, data in zip(starts, fetched, strict=True)]
        return [self._slice(blocks, offset, count) if count > 0 else b"" for offset, count in ranges]

    @staticmethod
    def _slice(blocks: list[tuple[int, memoryview]], offset: int, count: int) -> memoryview:
        """Bytes [offset, offset + count) out of the fetched ``(start, data)`` blocks (one holds them all)."""
        for start, data in blocks:
            if start <= offset and offset + count <= start + len(data):
                return data[offset - start : offset - start + count]
        raise EOFError(f"range {offset}+{count} lies beyond the end of the object")

    def close(self) -> None:
        """Nothing to release: the filesystem is shared."""


def zarr_store(url: str, *, writable: bool = False) -> Any:
    """zarr's :class:`~zarr.storage.FsspecStore` over the zarr hierarchy at ``url``.

    Raises
    ------
    InputError
        If the URL's fsspec backend is not installed (naming the extra).
    """
    from zarr.storage import FsspecStore

    filesystem(url)  # a missing backend gets its one-line message here
    return FsspecStore.from_url(url, read_only=not writable)


def zarr_location(path: str, *, writable: bool = False) -> Any:
    """What zarr opens for ``path``: the path itself, or :func:`zarr_store` for a URL."""
    return zarr_store(path, writable=writable) if is_url(path) else path


@contextlib.contextmanager
def uploaded(url: str, mode: str) -> Iterator[Any]:
    """A file object (``"wb"``, or ``"w"`` text as UTF-8) whose content becomes the object ``url``
    in one PUT when the block ends without error; nothing is stored otherwise.

    Raises
    ------
    OutputError
        If the object cannot be written.
    """
    buffer = io.BytesIO()
    handle: Any = buffer if mode == "wb" else io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    yield handle
    handle.flush()
    write_bytes(url, buffer.getvalue())
