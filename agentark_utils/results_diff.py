"""What changed between two results trees, apart from timings: the check that a change meant to keep
every result (a refactor) did, run as `python -m agentark_utils.results_diff OLD NEW`.

Every JSON, JSONL and CSV file under OLD is compared with its namesake under NEW, value by value,
leaving out what times or stamps a run: keys and columns named like `wall_s`, `latency_s`,
`tok_per_s`, `total_s`, and fingerprints (they hash the code, so any code change alters them).
JSONL rows and CSV rows are compared as multisets: a resumed debate appends the same records in
another order. Figures and executed notebooks are not compared (their bytes carry timings and
rendering details); the data drawn in them are.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path

# `_s` as a whole word at the end (wall_s, train_s, tok_per_s), never inside one (n_steps, prompts_seen).
_RUN_STAMP = re.compile(r"(^|_)(s|seconds)$|wall|latency|per_second|fingerprint")
COMPARED = (".json", ".jsonl", ".csv")
SKIPPED = ("benchmarks",)  # results/benchmarks/ holds speed measurements, which such a change may alter


def is_run_stamp(key: str) -> bool:
    """A key or column that times or stamps a run rather than holding a result."""
    return bool(_RUN_STAMP.search(str(key).lower()))


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not is_run_stamp(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def json_differences(old, new, path: str = "") -> list[str]:
    """Where two parsed JSON values differ (run stamps left out), one line per place."""
    old, new = _strip(old), _strip(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{path}.{k}: only in {'new' if k in new else 'old'}" for k in sorted(set(old) ^ set(new), key=str)]
        for k in sorted(set(old) & set(new), key=str):
            out += json_differences(old[k], new[k], f"{path}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in json_differences(a, b, f"{path}[{i}]")]
    if old == new or (old != old and new != new):  # equal, or both NaN
        return []
    return [f"{path or '(value)'}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}"]


def _row_differences(old: list[dict], new: list[dict]) -> list[str]:
    canon = lambda rows: Counter(json.dumps(_strip(r), sort_keys=True) for r in rows)  # noqa: E731
    a, b = canon(old), canon(new)
    out = [f"{len(old)} rows -> {len(new)} rows"] if len(old) != len(new) else []
    gone, added = a - b, b - a
    if gone or added:
        out.append(f"{sum(gone.values())} row(s) only in old, {sum(added.values())} only in new; "
                   f"e.g. old {next(iter(gone), '-')[:160]}")
    return out


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def file_differences(old: Path, new: Path) -> list[str]:
    if old.suffix == ".json":
        return json_differences(json.loads(old.read_text()), json.loads(new.read_text()))
    return _row_differences(_read_rows(old), _read_rows(new))


def results_differences(old_dir: str | Path, new_dir: str | Path) -> tuple[dict[str, list[str]], int]:
    """For each file (relative path) that differs or exists on one side only, how; and how many
    files were compared."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    names = lambda root: {p.relative_to(root) for p in root.rglob("*")  # noqa: E731
                          if p.suffix in COMPARED and p.relative_to(root).parts[0] not in SKIPPED}
    old_names, new_names = names(old_dir), names(new_dir)
    found = {str(rel): [f"only in {'old' if rel in old_names else 'new'}"] for rel in old_names ^ new_names}
    for rel in sorted(old_names & new_names):
        lines = file_differences(old_dir / rel, new_dir / rel)
        if lines:
            found[str(rel)] = lines
    return dict(sorted(found.items())), len(old_names | new_names)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(Path(a).is_dir() for a in args):
        print("usage: python -m agentark_utils.results_diff OLD_RESULTS_DIR NEW_RESULTS_DIR", file=sys.stderr)
        return 2
    found, compared = results_differences(*args)
    for rel, lines in found.items():
        print(f"{rel}:")
        print("\n".join(f"    {line}" for line in lines[:10]) + (f"\n    ... {len(lines) - 10} more" if len(lines) > 10 else ""))
    print(f"{compared} files compared (timings and fingerprints left out; {', '.join(SKIPPED)}/ skipped): "
          f"{len(found)} differ")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
