"""Checks over whole protobuf messages, for what a field's type cannot say.

A protobuf string may hold U+0000; PostgreSQL's text and JSONB cannot store it and fail the
statement. `reject_nul` refuses such a request up front with INVALID_ARGUMENT naming the field,
so nothing is half-written and the caller learns which value to fix.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from parley_kit.errors import InvalidArgument

NUL = "\x00"


def find_nul(message: Message, skip: Iterable[str] = ()) -> str | None:
    """The path of the first string of `message` (map keys included) holding a NUL, or None.

    Paths read like `rows[2].field_values['age']`. `skip` names top-level fields left out (those whose
    own validation decides, e.g. hints that are dropped rather than refused).
    """
    return _walk(message, "", frozenset(skip))


def reject_nul(message: Message, skip: Iterable[str] = ()) -> None:
    """InvalidArgument naming the first string of `message` that holds a NUL character."""
    path = find_nul(message, skip)
    if path is not None:
        raise InvalidArgument(f"{path} contains a NUL character (\\x00), which cannot be stored; remove it")


def _walk(message: Message, prefix: str, skip: frozenset[str]) -> str | None:
    for fd, value in message.ListFields():
        if fd.name in skip:
            continue
        path = prefix + fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            found = _walk_map(fd, value, path)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            items = enumerate(value) if fd.is_repeated else [(None, value)]
            found = next(
                (p for i, item in items if (p := _walk(item, _at(path, i) + ".", frozenset())) is not None), None
            )
        elif fd.type == FieldDescriptor.TYPE_STRING:
            items = enumerate(value) if fd.is_repeated else [(None, value)]
            found = next((_at(path, i) for i, text in items if NUL in text), None)
        else:
            found = None
        if found is not None:
            return found
    return None


def _walk_map(fd: FieldDescriptor, mapping: object, path: str) -> str | None:
    value_fd = fd.message_type.fields_by_name["value"]
    for key, value in mapping.items():  # type: ignore[attr-defined]
        where = f"{path}[{key!r}]"
        if isinstance(key, str) and NUL in key:
            return f"{path} (a key)"
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
            found = _walk(value, where + ".", frozenset())
            if found is not None:
                return found
        elif isinstance(value, str) and NUL in value:
            return where
    return None


def _at(path: str, index: int | None) -> str:
    return path if index is None else f"{path}[{index}]"
