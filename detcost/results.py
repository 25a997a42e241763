"""Results: one append-only JSONL file per sweep, loaded into one tidy pandas table.

Every record is written and flushed (and fsynced) as soon as its trial ends, so a sweep
that is interrupted loses nothing that finished.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from detcost.errors import TornRecordWarning, UsageError
from detcost.record import SCHEMA_VERSION, TABLE_COLUMNS, Kind, TrialRecord, table_rows


def iter_records(path: str | Path, torn_at: list[int] | None = None) -> Iterator[dict]:
    """Yield the records of a results file; a file that is not detcost's JSONL is a UsageError.

    A last line cut short (unterminated and not JSON) after at least one good record is a
    torn write, not a foreign file: the records before it are yielded, a
    `TornRecordWarning` names the file and the line, and `torn_at` (where given) gets the
    byte offset the torn line starts at (`--resume` cuts the file there). A bad line
    anywhere else is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"results file {path} does not exist")
    good, offset = 0, 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if good and not raw.endswith(b"\n"):  # the last line (only it lacks a newline), cut short
                    warnings.warn(TornRecordWarning(_torn(path, n, good)), stacklevel=2)
                    if torn_at is not None:
                        torn_at.append(start)
                    return
                raise UsageError(f"{path} is not a detcost results file (line {n} is not JSON)") from None
            good += 1
            yield _check(record, path, n)


def _torn(path: Path, n: int, good: int) -> str:
    return (
        f"{path}: line {n}, the last, is cut short (a write that did not finish: a full disk, a crash); "
        f"read the {good} record{'s' * (good != 1)} before it"
    )


def _check(record: object, path: Path, n: int) -> dict:
    if not isinstance(record, dict) or any(k not in record for k in TABLE_COLUMNS):
        raise UsageError(f"{path} is not a detcost results file (line {n} lacks detcost's fields)")
    if record["schema_version"] > SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema version {record['schema_version']}; this detcost reads up to "
            f"{SCHEMA_VERSION}: upgrade detcost"
        )
    return record


def read_records(paths: str | Path | Iterable[str | Path]) -> list[dict]:
    """All records of one or more files, the newer record of a trial superseding the older."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    latest: dict[tuple, dict] = {}
    for path in paths:
        for record in iter_records(path):
            record.setdefault("results_path", str(path))
            latest[(record.get("run_id"), record["trial_id"])] = record
    return list(latest.values())


def load_records(paths: str | Path | Iterable[str | Path]) -> list[TrialRecord]:
    """All records of one or more files as `TrialRecord`s (latest record of a trial wins),
    each knowing the file it came from: what the analysis reads."""
    return [TrialRecord.from_json(r) for r in read_records(paths)]


def load(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One call: results file(s) -> a DataFrame, one row per trial (latest record wins):
    the pandas export for users, built from the same records the analysis reads.

    The columns are the record's (`detcost.record.TrialRecord.row`): nested fields
    flattened with dots (`flags.cudnn_benchmark`, `env.gpu`, `busy.busy`), statistics
    recomputed from the raw step times; `step_times_s` stays a list per row.
    """
    return frame(read_records(paths))


def frame(records: list[dict]) -> pd.DataFrame:
    """Stored records (JSON objects) -> the results table."""
    rows = table_rows(records)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(TABLE_COLUMNS))


def load_benchmark_json(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """pytest-benchmark `--benchmark-json` file(s) -> the same table shape as `load()`.

    One row per micro-benchmark: `kind` "microbench", the layer as `workload`, the
    setting the run applied, its read-back `flags.*`, step time statistics and samples/s;
    `step_times_s` holds the raw rounds when pytest-benchmark saved them
    (`--benchmark-save-data`).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            benchmarks = data["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{path} is not a pytest-benchmark JSON file") from None
        rows += [_microbench_row(b, data, path) for b in benchmarks]
    return pd.json_normalize(rows, max_level=1) if rows else pd.DataFrame(columns=list(TABLE_COLUMNS))


def _microbench_row(b: dict, data: dict, path) -> dict:
    info, stats = b.get("extra_info", {}), b["stats"]
    batch = info.get("batch") or 1
    layer = info.get("layer", b["name"])
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": data.get("datetime", str(path)),
        "trial_id": f"microbench/{layer}/{info.get('setting')}",
        "kind": str(Kind.MICROBENCH),
        "workload": layer,
        "setting": info.get("setting"),
        "repeat": 0,
        "device": info.get("device"),
        "threads": info.get("threads"),
        "status": "ok",
        "error": None,
        "batch_size": batch,
        "flags": info.get("flags", {}),
        "step_times_s": stats.get("data"),
        "step_time_median_s": stats["median"],
        "step_time_iqr_s": stats["iqr"],
        "samples_per_s": batch / stats["median"],
        "rounds": stats["rounds"],
        "results_path": str(path),
    }


class ResultsWriter:
    """Appends records to a JSONL file, flushing and syncing each one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(finite(record), default=_jsonable, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def finite(value: object) -> object:
    """Non-finite floats become null: the file stays strict JSON for every reader
    (a NaN loss is already said by the record's status)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _jsonable(value: object) -> object:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def check_writable(path: str | Path, what: str) -> None:
    """Fail now, in one line, where `path` (a file or a folder still to be made) could not
    be written later: its nearest existing ancestor must be a folder this process may
    write into (or `path` itself an existing writable one). Creates nothing."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise UsageError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    try:  # a real attempt: permissions alone say nothing for root, or on /proc
        os.rmdir(tempfile.mkdtemp(prefix=".detcost-check-", dir=folder))
    except OSError as exc:
        why = exc.strerror or str(exc)  # /proc answers "No such file or directory" for a folder that exists
        raise UsageError(f"cannot write {what} {path}: the folder {folder} takes no new files ({why})") from None


def open_for_sweep(path: str | Path, resume: bool) -> list[dict]:
    """Check that a sweep may write `path`; return the records already there (resume).

    An existing, non-empty results file is never overwritten: without `resume` it is a
    UsageError. The file's directory is created; an unwritable path is a UsageError.
    """
    path = Path(path)
    check_writable(path, "results file")
    existing: list[dict] = []
    if path.exists() and path.stat().st_size > 0:
        if not resume:
            raise UsageError(
                f"results file {path} already exists; pass --resume to continue it, or choose another --results"
            )
        torn_at: list[int] = []
        existing = list(iter_records(path, torn_at))
        _end_whole(path, torn_at[0] if torn_at else None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write results file {path}: {exc.strerror or exc}") from None
    return existing


def _end_whole(path: Path, torn_at: int | None) -> None:
    """Before a resumed sweep appends: cut a torn last line off (at `torn_at`), and end a
    last record that lacks its newline with one, so the next record starts a line."""
    try:
        with open(path, "r+b") as f:
            if torn_at is not None:
                f.truncate(torn_at)
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UsageError(f"cannot write results file {path}: {exc.strerror or exc}") from None
