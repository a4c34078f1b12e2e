"""Files that survive interruption.

- JSONL records are appended one line per finished item and flushed to disk (fsync), so a killed
  run keeps every finished item; a torn last line (the process died mid-write) is cut off when the
  file is next opened, never parsed as a record. A bad line anywhere else is not a torn write but
  damage: reading stops with an error rather than dropping the records after it.
- JSON and other small outputs are written to a temporary file and renamed (atomic on POSIX), so
  a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class CorruptJSONLError(ValueError):
    """A line other than the last is not a JSON record: the file is damaged, not merely torn."""

    def __init__(self, path: Path, line: int, reason: str):
        super().__init__(f"{path}, line {line}: not a JSON record ({reason}). Only a torn last line is "
                         f"repaired; the records after this one are kept, so fix or delete the line by hand.")
        self.path, self.line = path, line


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """All records of a JSONL file; FileNotFoundError if it does not exist.

    A torn last line (no newline, or not JSON) is an interrupted append: it is skipped, and with
    repair=True truncated away on disk so that appends continue cleanly. A bad line before the
    last raises CorruptJSONLError naming the file and the line (1-based).
    """
    path = Path(path)
    records, good_bytes, bad = [], 0, None
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if bad is not None:  # a line follows the bad one, so the bad one was not the last
                raise CorruptJSONLError(path, *bad)
            if not raw.endswith(b"\n"):
                break  # only the last line can lack its newline: torn
            try:
                record = json.loads(raw)
            except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError on broken UTF-8
                bad = (number, str(error))
            else:
                records.append(record)
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


def _finite(value):
    """NaN and infinities become null: JSON has no such numbers, and DVC's metrics reader rejects them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (a temporary sibling, then rename), with NaN written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
