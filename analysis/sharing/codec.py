"""A safe binary format for the finished reports and heatmaps the processes share (no pickle).

``dumps(value)`` writes ``b"LQS1"``, a 4-byte big-endian header length, a JSON header and the raw
bytes of every array and byte string after it. The header describes the value as a tree: numbers,
strings, ``None`` and booleans as JSON; tuples, lists and dicts tagged (dict keys may be any of
these); numpy arrays as dtype, shape and a blob; and the frozen dataclasses of :data:`ALLOWED`
by their qualified name. ``loads`` rebuilds only those: any other class name, an object dtype, a
blob out of range or a malformed header is a :class:`CodecError`, so a value read back from Redis
can never run code (unlike ``pickle.loads``). A value holding anything else cannot be encoded
(:class:`CodecError`): the caller keeps it in process only.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import struct
from typing import Any

import numpy as np

__all__ = ["dumps", "loads", "CodecError", "ALLOWED", "MAGIC"]

MAGIC = b"LQS1"

#: The only classes :func:`loads` builds (module, qualified name): what a report or heatmap holds.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("analysis.report", "Report"),
    ("analysis.liqmap", "LiquidationMap"),
    ("analysis.liqmap", "SweptSeries"),
    ("analysis.liqmap", "PricePath"),
    ("analysis.metrics", "Reading"),
    ("analysis.metrics", "SkewClass"),
    ("analysis.metrics", "Cluster"),
    ("analysis.metrics", "Threshold"),
    ("analysis.windows", "Window"),
    ("analysis.tape.realized", "RealizedTape"),
    ("analysis.tape.events", "LiquidationEvent"),
    ("analysis.tape.events", "Gap"),
    ("analysis.tape.events", "Coverage"),
    ("analysis.heatmap", "HeatmapStates"),
})
_MAX_DEPTH = 64


class CodecError(ValueError):
    """A value that cannot be encoded, or bytes that are not a value this codec wrote."""


def dumps(value: Any) -> bytes:
    """``value`` as bytes (see the module docstring); :class:`CodecError` for anything not allowed."""
    blobs: list[bytes] = []
    tree = _enc(value, blobs, 0)
    header = json.dumps({"v": tree, "b": [len(b) for b in blobs]}, separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, struct.pack(">I", len(header)), header, *blobs])


def loads(data: bytes) -> Any:
    """The value :func:`dumps` wrote; :class:`CodecError` for anything else."""
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise CodecError("not a shared report (wrong magic)")
    (n,) = struct.unpack(">I", view[4:8])
    if 8 + n > len(view):
        raise CodecError("truncated header")
    try:
        head = json.loads(bytes(view[8 : 8 + n]).decode("utf-8"))
        sizes = [int(s) for s in head["b"]]
        tree = head["v"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"malformed header ({type(exc).__name__})") from None
    blobs: list[memoryview] = []
    at = 8 + n
    for s in sizes:
        if s < 0 or at + s > len(view):
            raise CodecError("a blob runs past the end")
        blobs.append(view[at : at + s])
        at += s
    if at != len(view):
        raise CodecError("trailing bytes")
    return _dec(tree, blobs, 0)


def _enc(x: Any, blobs: list[bytes], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("nested too deeply")
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, (np.integer, np.floating)):
        return x if isinstance(x, int) or x == x and abs(x) != float("inf") else {"$f": repr(float(x))}
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return _enc(x.item(), blobs, depth)
    if isinstance(x, (bytes, bytearray, memoryview)):
        blobs.append(bytes(x))
        return {"$b": len(blobs) - 1}
    if isinstance(x, np.ndarray):
        if x.dtype.hasobject or x.dtype.kind not in "biufcM":
            raise CodecError(f"cannot share an array of dtype {x.dtype}")
        blobs.append(np.ascontiguousarray(x).tobytes())
        return {"$nd": len(blobs) - 1, "dt": x.dtype.str, "sh": list(x.shape)}
    if isinstance(x, tuple):
        return {"$t": [_enc(i, blobs, depth + 1) for i in x]}
    if isinstance(x, list):
        return {"$l": [_enc(i, blobs, depth + 1) for i in x]}
    if isinstance(x, dict):
        return {"$d": [[_enc(k, blobs, depth + 1), _enc(v, blobs, depth + 1)] for k, v in x.items()]}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        name = (cls.__module__, cls.__qualname__)
        if name not in ALLOWED:
            raise CodecError(f"cannot share a {cls.__qualname__}")
        return {"$dc": ".".join(name), "f": {f.name: _enc(getattr(x, f.name), blobs, depth + 1)
                                             for f in dataclasses.fields(x)}}
    raise CodecError(f"cannot share a {type(x).__qualname__}")


def _dec(x: Any, blobs: list[memoryview], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("nested too deeply")
    if x is None or isinstance(x, (bool, str, int, float)):
        return x
    if isinstance(x, list):
        raise CodecError("an untagged list")
    if not isinstance(x, dict) or len(x) not in (1, 2, 3):
        raise CodecError("an unknown node")
    try:
        if "$f" in x:
            text = str(x["$f"])
            if text not in ("nan", "inf", "-inf"):
                raise CodecError("a bad special float")
            return float(text)
        if "$b" in x:
            return bytes(blobs[int(x["$b"])])
        if "$nd" in x:
            dt = np.dtype(str(x["dt"]))
            if dt.hasobject or dt.kind not in "biufcM":
                raise CodecError("a refused dtype")
            shape = tuple(int(s) for s in x["sh"])
            arr = np.frombuffer(blobs[int(x["$nd"])], dtype=dt)
            return arr.reshape(shape).copy()  # owned and writeable, like the original
        if "$t" in x:
            return tuple(_dec(i, blobs, depth + 1) for i in x["$t"])
        if "$l" in x:
            return [_dec(i, blobs, depth + 1) for i in x["$l"]]
        if "$d" in x:
            return {_dec(k, blobs, depth + 1): _dec(v, blobs, depth + 1) for k, v in x["$d"]}
        if "$dc" in x:
            return _build(str(x["$dc"]), x["f"], blobs, depth)
    except CodecError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise CodecError(f"a malformed node ({type(exc).__name__})") from None
    raise CodecError("an unknown tag")


def _build(path: str, fields: Any, blobs: list[memoryview], depth: int) -> Any:
    module, _, qual = path.rpartition(".")
    if (module, qual) not in ALLOWED or not isinstance(fields, dict):
        raise CodecError(f"refused class {path[:80]!r}")
    cls = getattr(importlib.import_module(module), qual)
    names = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != names:
        raise CodecError(f"{qual}: fields differ from this version's")
    obj = object.__new__(cls)  # the values were validated when the object was first built
    for name, value in fields.items():
        object.__setattr__(obj, name, _dec(value, blobs, depth + 1))
    return obj
