"""Record raw venue responses to a directory, and replay them offline.

A recording directory holds one file per response body (exactly the bytes the venue sent) and a
``manifest.json``::

    {"format": 1, "created": "2026-11-25T13:40:02Z", "now_ms": 1795613999000,
     "meta": {"symbol": "BTCUSDT", "window": "1d", "venues": ["binance"], "failed": {}},
     "responses": [{"file": "0001-binance-fapi-v1-exchangeInfo.json", "venue": "binance",
                    "url": "https://fapi.binance.com/fapi/v1/exchangeInfo", "path": "/fapi/v1/exchangeInfo",
                    "params": {}, "status": 200, "time": "2026-11-25T13:40:02Z", "sha256": "…"}, …]}

:class:`Recorder` is what :class:`~analysis.sources.http.VenueClient` writes into (``liqmap
record``, :func:`analysis.sources.registry.record`; it implements http's ``ResponseSink``, so this
module depends only on the HTTP layer below it, never on the registry). :class:`ReplayTransport` is an ``httpx`` transport that answers each request with the
recorded body for the same host, path and query, after checking its sha256; a request that was
not recorded gets a 404 whose message says so. Sources replay with the recording's ``now_ms``, so
they ask for exactly the pages they asked for while recording.

A manifest is outside input and checked field by field before anything is opened: ``file`` is a
plain file name in the recording directory (no separators, no ``..``; a symlink must resolve
inside the directory), every file must be a regular file (checked with ``stat`` before opening,
and opened non-blocking, so a FIFO or device can never block or stream forever), a response file
holds at most :data:`MAX_RESPONSE_BYTES` and the manifest at most :data:`MAX_MANIFEST_BYTES` with
at most :data:`MAX_RESPONSES` entries; ``venue`` is a known venue, ``url`` an https URL,
``path`` and ``params`` match it, ``sha256`` is 64 hex digits; a POST (Hyperliquid's ``/info``)
has ``"method": "POST"`` and ``request``, the JSON body it sent (at most :data:`MAX_REQUEST_CHARS`),
and is replayed for the same URL and the same JSON body (key order aside).

`liqmap record` writes the manifest once, at the end of a recording that got at least one venue: one
that fails (every venue down, an error, Ctrl-C) removes the files it wrote, so the same ``--out``
can be used again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import httpx

from ..errors import InputError, SourceError
from ..files import read_regular
from ..venues import VENUE_NAMES

__all__ = [
    "Recorder", "ReplayTransport", "Manifest", "load_manifest", "MANIFEST", "request_key",
    "KNOWN_VENUES", "MAX_RESPONSE_BYTES", "MAX_MANIFEST_BYTES", "MAX_RESPONSES", "MAX_REQUEST_CHARS",
]

MANIFEST = "manifest.json"
FORMAT = 1
#: Venues whose responses a recording may hold.
KNOWN_VENUES = VENUE_NAMES
#: Largest response file replay reads (a Binance exchangeInfo is about 1 MB, a klines page 0.2 MB).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: Largest manifest.json, and most entries in it.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_RESPONSES = 20_000
#: Longest JSON body of a recorded POST (Hyperliquid's ``/info`` requests are under 200 characters).
MAX_REQUEST_CHARS = 4096

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_URL_PATH = re.compile(r"/[A-Za-z0-9/._~%-]{0,300}", re.ASCII)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_key(url: httpx.URL | str, request_body: bytes | str | None = None) -> tuple[Any, ...]:
    """What identifies a request: host, path, the sorted query parameters and, for a POST, its JSON
    body in canonical form (keys sorted, no spaces), so that key order never matters."""
    u = httpx.URL(str(url))
    key: tuple[Any, ...] = (u.host, u.path, tuple(sorted((k, v) for k, v in u.params.multi_items())))
    if request_body is None:
        return key
    try:
        canonical = json.dumps(json.loads(request_body), sort_keys=True, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        canonical = "<not json>"
    return (*key, canonical)


def _shown(text: object, n: int = 60) -> str:
    """An outside value, escaped and cut, for an error message."""
    return ascii(str(text)[:n])


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Recorder:
    """Writes each response body to ``directory``; :meth:`save` writes ``manifest.json`` (atomically).

    ``now_ms`` is the clock the recorded sources used; replay uses it again. With ``autosave`` the
    manifest is rewritten after each response (a recorder used directly); :func:`record` turns it
    off, saves once at the end and calls :meth:`discard` on failure, so a retry is never blocked.
    """

    def __init__(self, directory: str | Path, *, now_ms: int | None = None, autosave: bool = True) -> None:
        self.dir = Path(directory)
        self.autosave = autosave
        self._made_dir = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        if not self.dir.is_dir():
            raise InputError(f"{self.dir} is not a directory")
        if os.path.lexists(self.dir / MANIFEST):
            raise InputError(f"{self.dir} already holds a recording; choose an empty directory")
        self.now_ms = int(now_ms if now_ms is not None else time.time() * 1000)
        self.created = time.time()
        self.meta: dict[str, Any] = {}
        self.responses: list[dict[str, Any]] = []

    def record(self, venue: str, url: str, path: str, params: Mapping[str, Any], status: int, body: bytes,
               **request: bytes) -> None:
        """Store one response body and its manifest entry (``request_body=`` the JSON a POST sent)."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")[:60] or "root"
        name = f"{len(self.responses) + 1:04d}-{venue}-{slug}.json"
        try:
            _write_atomic(self.dir / name, body)
        except OSError as exc:
            raise InputError(f"cannot write the recording in {self.dir}: {exc.strerror or exc}") from None
        self.responses.append({
            "file": name, "venue": venue, "url": url, "path": path,
            "params": {k: str(v) for k, v in params.items()}, "status": status,
            "time": _iso(time.time()), "sha256": hashlib.sha256(body).hexdigest(),
        })
        sent = request.get("request_body")
        if sent is not None:
            self.responses[-1].update(method="POST", request=sent.decode("utf-8", "replace"))
        if self.autosave:
            self.save()

    def save(self) -> None:
        """Write ``manifest.json`` (atomically)."""
        manifest = {
            "format": FORMAT, "created": _iso(self.created), "now_ms": self.now_ms, "meta": self.meta,
            "responses": self.responses,
        }
        try:
            _write_atomic(self.dir / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        except OSError as exc:
            raise InputError(f"cannot write the recording in {self.dir}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        """Remove the files this recorder wrote (and the directory, if it made it and it is empty)."""
        for r in self.responses:
            (self.dir / r["file"]).unlink(missing_ok=True)
        self.responses = []
        (self.dir / MANIFEST).unlink(missing_ok=True)
        if self._made_dir:
            try:
                self.dir.rmdir()
            except OSError:  # something else is in it now: leave it
                pass


class Manifest:
    """A loaded, checked ``manifest.json`` (build it with :func:`load_manifest`)."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.dir = directory
        self.now_ms: int = data["now_ms"]
        self.meta: dict[str, Any] = data.get("meta") or {}
        self.responses: list[dict[str, Any]] = data["responses"]

    @property
    def venues(self) -> list[str]:
        """Venues that have responses, in recording order."""
        seen: list[str] = []
        for r in self.responses:
            if r["venue"] not in seen:
                seen.append(r["venue"])
        return seen

    def read(self, entry: Mapping[str, Any]) -> bytes:
        """The recorded body of ``entry`` (a regular file in the directory, size-capped), else OSError/ValueError."""
        return read_regular(self.dir / entry["file"], MAX_RESPONSE_BYTES)


def _check_file(d: Path, root: Path, name: object) -> str:
    """Why ``name`` is not a readable response file confined to ``d``, or "" when it is."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name == MANIFEST:
        return f"file {_shown(name)} is not a plain file name in the recording directory"
    path = d / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return f"file {name} is missing"
    if real.parent != root:
        return f"file {name} leads outside the recording directory"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"file {name} is unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return f"file {name} is not a regular file"
    if st.st_size > MAX_RESPONSE_BYTES:
        return f"file {name} holds {st.st_size} bytes, over the limit of {MAX_RESPONSE_BYTES}"
    return ""


def _check_entry(d: Path, root: Path, r: object) -> str:
    """Why one ``responses`` entry is unusable, or "" when it is fine."""
    if not isinstance(r, dict):
        return "is not an object"
    missing = {"file", "venue", "url", "sha256"} - r.keys()
    if missing:
        return f"lacks {', '.join(sorted(missing))}"
    venue, url, sha = r["venue"], r["url"], r["sha256"]
    if not isinstance(venue, str) or venue not in KNOWN_VENUES:
        return f"venue {_shown(venue, 20)} is not a known venue ({', '.join(KNOWN_VENUES)})"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return "sha256 is not 64 lower-case hex digits"
    if not isinstance(url, str) or len(url) > 4096 or not url.isascii():
        return "url is not an https URL"
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return f"url {_shown(url)} is not an https URL"
    if u.scheme != "https" or not u.host or u.userinfo or u.fragment:
        return f"url {_shown(url)} is not an https URL"
    path = r.get("path", u.path)
    if not isinstance(path, str) or not _URL_PATH.fullmatch(path) or path != u.path:
        return f"path {_shown(path)} is not the path of its url"
    params = r.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        return "params is not an object of strings"
    method = r.get("method", "GET")
    if method not in ("GET", "POST"):
        return f"method {_shown(method, 12)} is not GET or POST"
    sent = r.get("request")
    if method == "POST":
        if not isinstance(sent, str) or len(sent) > MAX_REQUEST_CHARS:
            return "request (the JSON body of a POST) is missing or too long"
        try:
            json.loads(sent)
        except (ValueError, RecursionError):
            return "request (the JSON body of a POST) is not JSON"
    elif sent is not None:
        return "request is set on a GET"
    status = r.get("status", 200)
    if type(status) is not int or not 200 <= status <= 299:
        return f"status {_shown(status, 12)} is not a successful HTTP status"
    return _check_file(d, root, r["file"])


def _check_meta(meta: object) -> str:
    """Why ``meta`` is unusable, or "" (its strings reach replay's messages)."""
    if meta is None:
        return ""
    if not isinstance(meta, dict):
        return "meta is not an object"
    for key in ("symbol", "window", "exchange"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9]{1,30}", value, re.ASCII)):
            return f"meta.{key} is not a short name"
    return ""


def load_manifest(directory: str | Path) -> Manifest:
    """Read and check ``DIR/manifest.json`` (see the module docstring); InputError naming what is wrong."""
    d = Path(directory)
    path = d / MANIFEST
    try:
        root = d.resolve(strict=True)
        is_dir = root.is_dir()
    except (OSError, RuntimeError):
        is_dir = False
    if not is_dir or not os.path.lexists(path):
        raise InputError(f"no recording in {d} (no {MANIFEST}); make one with: liqmap record --out {d}")
    try:
        if path.resolve(strict=True).parent != root:
            raise ValueError("leads outside the recording directory")
        raw = read_regular(path, MAX_MANIFEST_BYTES)
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, OSError, RuntimeError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        if isinstance(exc, ValueError) and not isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
            why = str(exc)[:80]
        raise InputError(f"{path} is not a readable recording manifest ({why})") from None
    ok = (
        isinstance(data, dict) and data.get("format") == FORMAT and type(data.get("now_ms")) is int
        and 0 < data["now_ms"] < 10**14 and isinstance(data.get("responses"), list)
    )
    if not ok:
        raise InputError(f"{path} is not a liqmap recording manifest (format {FORMAT})")
    if len(data["responses"]) > MAX_RESPONSES:
        raise InputError(f"{path} lists {len(data['responses'])} responses, over the limit of {MAX_RESPONSES}")
    why = _check_meta(data.get("meta"))
    if why:
        raise InputError(f"{path}: {why}")
    for i, r in enumerate(data["responses"], 1):
        why = _check_entry(d, root, r)
        if why:
            raise InputError(f"{path}: response {i} {why}")
    return Manifest(d, data)


class ReplayTransport(httpx.AsyncBaseTransport):
    """Serves recorded bodies by (host, path, query); checks each file's sha256 before serving it."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in manifest.responses:
            self._by_key[request_key(r["url"], r.get("request"))] = r
        self.served = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = (await request.aread()) if request.method == "POST" else None
        entry = self._by_key.get(request_key(request.url, sent))
        if entry is None:
            meta = self.manifest.meta
            what = f" (recorded: {meta.get('symbol', '?')} {meta.get('window', '?')})" if meta else ""
            return httpx.Response(404, json={"msg": f"not in the recording at {self.manifest.dir}{what}: {request.url.path}"},
                                  request=request)
        name = entry["file"]
        try:
            body = self.manifest.read(entry)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SourceError(entry["venue"], entry.get("path", "?"), f"recorded file {name} is unreadable: {why}") from None
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise SourceError(entry["venue"], entry.get("path", "?"),
                              f"recorded file {name} does not match its sha256 in {MANIFEST}: it was modified or damaged")
        self.served += 1
        return httpx.Response(entry.get("status", 200), content=body, headers={"content-type": "application/json"},
                              request=request)
