"""Shortcut templates: `{{contact.first_name}}`, `{{contact.fields.plan}}`, `{{user.name}}`, with an
optional fallback after `|` (`{{contact.first_name|there}}`).

A template is checked when a shortcut is saved (unknown variables and malformed braces are refused)
and rendered when it is sent. A variable without a value and without a fallback is an error naming
it: a customer never receives a literal `{{...}}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from parley_kit.errors import FailedPrecondition, InvalidArgument

_VARIABLE = re.compile(r"\{\{\s*([^{}|]*?)\s*(?:\|([^{}]*))?\}\}")
_NAME = re.compile(
    r"^(contact\.(first_name|last_name|name)|contact\.fields\.[A-Za-z0-9_\-]{1,64}|user\.(name|first_name))$"
)
_FIELDS = "contact.fields."
KNOWN = "contact.first_name, contact.last_name, contact.name, contact.fields.<key>, user.name, user.first_name"


@dataclass(frozen=True)
class RenderContext:
    """The values a template may use."""

    contact_first_name: str = ""
    contact_last_name: str = ""
    contact_name: str = ""
    contact_fields: Mapping[str, object] = field(default_factory=dict)
    user_name: str = ""

    def value(self, name: str) -> str:
        if name == "contact.first_name":
            return self.contact_first_name
        if name == "contact.last_name":
            return self.contact_last_name
        if name == "contact.name":
            return self.contact_name or " ".join(p for p in (self.contact_first_name, self.contact_last_name) if p)
        if name == "user.name":
            return self.user_name
        if name == "user.first_name":
            return self.user_name.split(" ", 1)[0] if self.user_name else ""
        if name.startswith(_FIELDS):
            raw = self.contact_fields.get(name.removeprefix(_FIELDS))
            if raw is None:
                return ""
            if isinstance(raw, bool):
                return "yes" if raw else "no"
            if isinstance(raw, list):
                return ", ".join(str(v) for v in raw)
            return str(raw)
        return ""


def variables(template: str) -> list[str]:
    """The variable names a template uses, in order."""
    return [m.group(1) for m in _VARIABLE.finditer(template)]


def field_keys(template: str) -> set[str]:
    """The custom field keys a template uses (`{{contact.fields.<key>}}`)."""
    return {v.removeprefix(_FIELDS) for v in variables(template) if v.startswith(_FIELDS)}


def validate(template: str) -> None:
    """Refuse unknown variables and stray braces (InvalidArgument naming the problem)."""
    for match in _VARIABLE.finditer(template):
        name = match.group(1)
        if not _NAME.match(name):
            raise InvalidArgument(f"unknown variable '{{{{{name}}}}}' in shortcut text; known variables: {KNOWN}")
    leftover = _VARIABLE.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise InvalidArgument(
            "shortcut text has unbalanced '{{' or '}}'; write variables as {{contact.first_name}} "
            "or {{contact.first_name|fallback}}"
        )


def render(template: str, context: RenderContext) -> str:
    """The template with every variable replaced; FailedPrecondition when one has no value and no fallback."""
    validate(template)
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        value = context.value(name).strip()
        if value:
            return value
        if fallback is not None:
            return fallback.strip()
        missing.append(name)
        return ""

    rendered = _VARIABLE.sub(replace, template)
    if missing:
        names = ", ".join(f"{{{{{n}}}}}" for n in dict.fromkeys(missing))
        raise FailedPrecondition(
            f"the shortcut uses {names} but this contact/user has no value for it; "
            "fill the value, or give the variable a fallback such as {{contact.first_name|there}}"
        )
    return rendered
