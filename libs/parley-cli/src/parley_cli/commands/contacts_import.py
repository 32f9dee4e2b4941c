"""The engine of `parley contacts import`: CSV records with the line each starts on, sent in batches, each
batch's outcome printed as soon as it is answered, and on a failed call exactly which lines are committed,
which are unknown and which are not imported, with the command that resumes.

Every row is its own transaction on the server, so the rows of answered batches are final; the rows of a
batch whose call failed (INTERNAL, DEADLINE_EXCEEDED, UNAVAILABLE...) may be partly imported.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import json
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc
from parley.contacts.v1 import contacts_service_pb2 as pb

IMPORT_BATCH = 500
# Statuses the service answers before touching any row (the whole call refused): its rows are not imported.
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
DEDUPE = {"email": pb.IMPORT_DEDUPE_EMAIL, "phone": pb.IMPORT_DEDUPE_PHONE}
Record = tuple[int, dict[str, str]]
Send = Callable[[pb.ImportContactsRequest], Awaitable[pb.ImportContactsResponse]]


def read_records(path: Path) -> tuple[list[str], list[Record]]:
    """The header and every record with the line it starts on (a quoted value may span lines; blank lines
    are skipped), so a reported line is the line in the file."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        columns = next(reader, [])
        records: list[Record] = []
        start = reader.line_num + 1
        for values in reader:
            if values:
                records.append((start, dict(zip(columns, values, strict=False))))
            start = reader.line_num + 1
    return columns, records


def import_row(record: dict[str, str], targets: dict[str, str], profile: Sequence[str], separator: str) -> Any:
    """The ImportRow of one record: `targets` maps a column to a profile field, a custom key or 'tags'."""
    row = pb.ImportRow()
    for column, target in targets.items():
        value = (record.get(column) or "").strip()
        if not value:
            continue
        if target == "tags":
            row.tag_names.extend(t.strip() for t in value.split(separator) if t.strip())
        elif target in profile:
            setattr(row.profile, target, value)
        else:
            row.field_values[target] = value
    return row


def _span(lines: Sequence[int]) -> str:
    return f"{lines[0]}-{lines[-1]}" if len(lines) > 1 else str(lines[0])


def _ends(lines: Sequence[int]) -> list[int]:
    """First and last line (records are consecutive in the file), [] for none."""
    return [lines[0], lines[-1]] if lines else []


@dataclass
class Report:
    """Prints each answered batch at once (JSON Lines with --json: one object per row, then a summary)."""

    as_json: bool
    created: int = 0
    updated: int = 0
    failed: int = 0

    def batch(self, lines: Sequence[int], resp: Any) -> None:
        for result in resp.results:
            line = lines[result.index]
            outcome = "failed" if result.error else "updated" if result.updated else "created"
            if self.as_json:
                row = {"line": line, "outcome": outcome, "contact_id": result.contact_id, "error": result.error}
                if result.error:
                    row["error_code"] = _CODE_NAMES.get(result.error_code, str(result.error_code))
                click.echo(json.dumps(row, sort_keys=True))
            elif result.error:
                click.echo(f"line {line}: {result.error}", err=True)
        self.created += resp.created_count
        self.updated += resp.updated_count
        self.failed += resp.failed_count
        if not self.as_json:
            counts = f"{resp.created_count} created, {resp.updated_count} updated, {resp.failed_count} failed"
            click.echo(f"lines {_span(lines)}: {counts}")

    def summary(self, stop: Stop | None = None) -> None:
        """The totals; after a failed call, which lines are done, unknown and not imported, and how to resume."""
        data: dict[str, Any] = {"created": self.created, "updated": self.updated, "failed": self.failed}
        if self.as_json:
            data["complete"] = stop is None
            if stop is not None:
                data.update(
                    error=stop.error,
                    done_lines=_ends(stop.done),
                    unknown_lines=_ends(stop.unknown),
                    not_imported_lines=_ends(stop.not_imported),
                    resume=stop.resume,
                    warning=stop.warning,
                )
            click.echo(json.dumps({"summary": data}, sort_keys=True))
            return
        imported = self.created + self.updated
        click.echo(f"{imported} imported ({self.created} created, {self.updated} updated), {self.failed} failed")
        if stop is None:
            return
        say = functools.partial(click.echo, err=True)
        say(f"error: {stop.error} (the call for lines {_span(stop.call)})")
        if stop.done:
            say(f"lines {_span(stop.done)}: done, as reported above")
        if stop.unknown:
            say(f"lines {_span(stop.unknown)}: unknown, some of their rows may be imported (each row commits alone)")
        if stop.not_imported:
            say(f"lines {_span(stop.not_imported)}: not imported")
        say(f"resume with: {stop.resume}")
        if stop.warning:
            say(f"warning: {stop.warning}")


@dataclass(frozen=True)
class Stop:
    """Why and where an import stopped: the lines of the failed call, of answered batches, of rows that may or
    may not be imported (a call that failed after it started), and not imported."""

    error: str
    call: Sequence[int]
    done: Sequence[int]
    unknown: Sequence[int]
    not_imported: Sequence[int]
    resume: str
    warning: str


# google.rpc.Code numbers (ImportResult.error_code) -> their names.
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def resume_command(
    line: int,
    *,
    file: Path,
    mapping: Sequence[str],
    tag_separator: str,
    space: str,
    dedupe_by: str | None,
    mapped: set[str],
    as_json: bool,
    unknown: bool = True,
) -> tuple[str, str]:
    """The `parley contacts import` command that resumes at `line`, and a warning ('' if none). When the lines
    from `line` on may be partly imported (`unknown`), it deduplicates if the file allows it, so those rows
    update their contact instead of being added again."""
    words = ["parley", "contacts", "import", str(file), *(f"--map={m}" for m in mapping)]
    if tag_separator != ";":
        words.append(f"--tag-separator={tag_separator}")
    if space:
        words.append(f"--space={space}")
    dedupe, warning = dedupe_by, ""
    if dedupe is None and unknown:
        dedupe = next((k for k in sorted(DEDUPE) if k in mapped), None)
        warning = (
            f"--dedupe-by={dedupe} makes the rows of the unknown lines that were imported update their contact"
            if dedupe
            else "the file has no email or phone column to deduplicate on: rows of the unknown lines that were "
            "imported will be added again; check them (parley contacts list --search ...) before resuming"
        )
    if dedupe:
        words.append(f"--dedupe-by={dedupe}")
    words += [f"--start-line={line}", *(["--json"] if as_json else [])]
    return shlex.join(words), warning


async def run_import(
    lines: Sequence[int],
    rows: Sequence[Any],
    *,
    space: str,
    dedupe_by: str,
    send: Send,
    report: Report,
    resume: Callable[..., tuple[str, str]],
) -> bool:
    """Send `rows` (starting at `lines`) in batches, reporting each; False when a call failed and the import
    stopped. `resume(line, unknown=...)` gives the command that resumes at `line` and a warning ('' for none)."""
    dedupe = DEDUPE[dedupe_by] if dedupe_by else pb.IMPORT_DEDUPE_UNSPECIFIED
    for start in range(0, len(rows), IMPORT_BATCH):
        batch = lines[start : start + IMPORT_BATCH]
        request = pb.ImportContactsRequest(space_id=space, rows=rows[start : start + IMPORT_BATCH], dedupe_by=dedupe)
        try:
            resp = await send(request)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            rpc_error = isinstance(exc, grpc.aio.AioRpcError)
            error = f"{exc.code().name}: {exc.details()}" if rpc_error else "interrupted"
            refused = rpc_error and exc.code() in REFUSED
            unknown, not_imported = ([], lines[start:]) if refused else (batch, lines[start + IMPORT_BATCH :])
            command, warning = resume(batch[0], unknown=bool(unknown))
            report.summary(Stop(error, batch, lines[:start], unknown, not_imported, command, warning))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        report.batch(batch, resp)
    report.summary()
    return True
