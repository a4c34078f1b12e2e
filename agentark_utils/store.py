"""Files that survive interruption.

- JSONL records are appended one line per finished item and flushed to disk (fsync), so a killed
  run keeps every finished item; a torn last line (the process died mid-write) is cut off when the
  file is next opened, never parsed as a record.
- JSON and other small outputs are written to a temporary file and renamed (atomic on POSIX), so
  a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """All complete records of a JSONL file ([] if it does not exist).

    With repair=True a torn last line is truncated away on disk so that appends continue cleanly.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn write: the line never got its newline
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    if repair and good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return records


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append records and force them to disk before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(path: str | Path, records: list[dict]) -> None:
    """Replace a JSONL file's content atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    append_jsonl(tmp, records)
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically: a temporary sibling, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
