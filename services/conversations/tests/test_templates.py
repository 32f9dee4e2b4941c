"""Shortcut rendering: variables, fallbacks, and never a literal {{...}} to a customer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from parley_conversations.templates import RenderContext, render, validate, variables
from parley_kit.errors import FailedPrecondition, InvalidArgument

CTX = RenderContext(
    contact_first_name="Ada",
    contact_last_name="Lovelace",
    contact_fields={"plan": "pro", "vip": True, "tags": ["a", "b"]},
    user_name="Grace Hopper",
)


def test_renders_contact_user_and_custom_field_variables() -> None:
    text = "Hi {{contact.first_name}}, your plan is {{ contact.fields.plan }}. {{user.name}} here."
    assert render(text, CTX) == "Hi Ada, your plan is pro. Grace Hopper here."


def test_renders_derived_names_and_field_values() -> None:
    assert render("{{contact.name}} / {{user.first_name}}", CTX) == "Ada Lovelace / Grace"
    assert render("{{contact.fields.vip}} {{contact.fields.tags}}", CTX) == "yes a, b"


def test_missing_variable_without_fallback_is_an_error_naming_it() -> None:
    with pytest.raises(FailedPrecondition, match=r"\{\{contact.fields.city\}\}"):
        render("Weather in {{contact.fields.city}}", CTX)


def test_missing_variable_uses_declared_fallback() -> None:
    assert render("Hi {{contact.first_name|there}}!", RenderContext()) == "Hi there!"
    assert render("Hi {{ contact.fields.nick | friend }}!", CTX) == "Hi friend!"


def test_unknown_variable_is_refused_when_saved() -> None:
    with pytest.raises(InvalidArgument, match="unknown variable"):
        validate("Hello {{contact.password}}")


@pytest.mark.parametrize("text", ["Hello {{contact.first_name", "Hello }} there", "Hi {{ }}"])
def test_unbalanced_braces_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        validate(text)


def test_variables_lists_names_in_order() -> None:
    assert variables("{{user.name}} {{contact.first_name|x}}") == ["user.name", "contact.first_name"]


_names = st.sampled_from(["contact.first_name", "contact.last_name", "contact.fields.plan", "user.name"])
_plain = st.text(alphabet=st.characters(blacklist_characters="{}|"), max_size=20)


@given(st.lists(st.tuples(_plain, _names, st.one_of(st.none(), _plain)), max_size=6), _plain)
def test_rendered_text_never_contains_template_braces(chunks: list[tuple[str, str, str | None]], tail: str) -> None:
    template = "".join(f"{p}{{{{{n}{'' if f is None else '|' + f}}}}}" for p, n, f in chunks) + tail
    ctx = RenderContext(contact_first_name="A", user_name="U")
    try:
        out = render(template, ctx)
    except FailedPrecondition:
        return
    assert "{{" not in out and "}}" not in out
