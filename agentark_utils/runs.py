"""Run identity: what a stored result was made from, so that nothing stale is ever reused.

Every resumable thing here (debate records, scaling points, trainer checkpoints) is stamped with a
fingerprint of *everything that shapes it*: the settings, the input rows themselves (not their
ids: a changed task generator gives new questions under the same ids), the content of the models
it starts from and the source of the code that grades it. A re-run keeps a stored item only if
its stamp equals the one computed now (`resume_jsonl`, `training.prepare_checkpoints`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

from agentark_utils.store import read_jsonl, rewrite_jsonl


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (rows, settings, digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def path_digest(path: str | Path) -> str:
    """Digest of a file's or a directory's content (names and bytes), or the name itself when it
    is no local path (a hub id: its revision is the hub's business)."""
    path = Path(path)
    if not path.exists():
        return f"name:{path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = []
    for file in files:
        stat = file.stat()  # the stat only keys the cache (a rewrite changes ctime at least): the digest is of the bytes
        parts.append([str(file.relative_to(path)) if file != path else file.name,
                      _file_digest(str(file), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)])
    return fingerprint(parts)


def source_digest(*modules: str) -> str:
    """Digest of the source of the named modules (e.g. the grading code behind stored grades)."""
    return fingerprint([inspect.getsource(importlib.import_module(name)) for name in modules])


def resume_jsonl(path: str | Path, expected: Callable[[dict], str | None]) -> list[dict]:
    """The records of `path` whose "fingerprint" equals `expected(record)`; the others are removed
    from the file at once (None: the record is not wanted any more). [] when there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    records = read_jsonl(path, repair=True)
    kept = [r for r in records if r.get("fingerprint") is not None and r.get("fingerprint") == expected(r)]
    if len(kept) != len(records):
        rewrite_jsonl(path, kept)
    return kept
