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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import httpx

from ..errors import InputError, SourceError

__all__ = ["Recorder", "ReplayTransport", "Manifest", "load_manifest", "MANIFEST", "request_key"]

MANIFEST = "manifest.json"
FORMAT = 1


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_key(url: httpx.URL | str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """What identifies a GET: host, path and the sorted query parameters."""
    u = httpx.URL(str(url))
    return (u.host, u.path, tuple(sorted((k, v) for k, v in u.params.multi_items())))


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
    """Writes each response body to ``directory`` and keeps ``manifest.json`` up to date.

    ``now_ms`` is the clock the recorded sources used; replay uses it again. The manifest is
    rewritten atomically after each response, so an interrupted recording is still readable.
    """

    def __init__(self, directory: str | Path, *, now_ms: int | None = None) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        if (self.dir / MANIFEST).exists():
            raise InputError(f"{self.dir} already holds a recording; choose an empty directory")
        self.now_ms = int(now_ms if now_ms is not None else time.time() * 1000)
        self.created = time.time()
        self.meta: dict[str, Any] = {}
        self.responses: list[dict[str, Any]] = []

    def record(self, venue: str, url: str, path: str, params: Mapping[str, Any], status: int, body: bytes) -> None:
        """Store one response body and its manifest entry."""
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


class Manifest:
    """A loaded, checked ``manifest.json``."""

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


def load_manifest(directory: str | Path) -> Manifest:
    """Read and check ``DIR/manifest.json``; InputError when it is absent or malformed."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise InputError(f"no recording in {d} (no {MANIFEST}); make one with: liqmap record --out {d}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = (
            isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("now_ms"), int)
            and isinstance(data.get("responses"), list)
            and all(isinstance(r, dict) and {"file", "venue", "url", "sha256"} <= r.keys() for r in data["responses"])
        )
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable recording manifest ({type(exc).__name__})") from None
    if not ok:
        raise InputError(f"{path} is not a liqmap recording manifest (format {FORMAT})")
    return Manifest(d, data)


class ReplayTransport(httpx.AsyncBaseTransport):
    """Serves recorded bodies by (host, path, query); checks each file's sha256 before serving it."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in manifest.responses:
            self._by_key[request_key(r["url"])] = r
        self.served = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        entry = self._by_key.get(request_key(request.url))
        if entry is None:
            meta = self.manifest.meta
            what = f" (recorded: {meta.get('symbol', '?')} {meta.get('window', '?')})" if meta else ""
            return httpx.Response(404, json={"msg": f"not in the recording at {self.manifest.dir}{what}: {request.url.path}"},
                                  request=request)
        path = self.manifest.dir / entry["file"]
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise SourceError(entry["venue"], entry.get("path", "?"), f"recorded file {path.name} is unreadable: {exc.strerror or exc}") from None
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise SourceError(entry["venue"], entry.get("path", "?"),
                              f"recorded file {path.name} does not match its sha256 in {MANIFEST}: it was modified or damaged")
        self.served += 1
        return httpx.Response(entry.get("status", 200), content=body, headers={"content-type": "application/json"},
                              request=request)
