"""Edge rules every text must pass (core/jobs/validation.py): pure functions, no database.

Each rejection must be an ``InvalidInput`` (HTTP 422) whose message names the offending input and
says what to fix.
"""

from __future__ import annotations

import pytest

from core.config import Settings
from core.errors import InvalidInput, UnknownTask
from core.jobs.validation import check_inputs, check_task, check_text

LIMIT = 20


def limits(**overrides: int) -> Settings:
    values = {"max_inputs_per_job": 3, "max_text_chars": LIMIT, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def rejected(text: object, where: str = "text") -> str:
    with pytest.raises(InvalidInput) as caught:
        check_text(text, max_chars=LIMIT, where=where)
    assert caught.value.status == 422
    return caught.value.detail


# --- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["great film", "tab\tseparated", "two\nlines", "crlf\r\nend", "café ☕ 😀", " padded "],
)
def test_ordinary_text_is_accepted_unchanged(text: str) -> None:
    assert check_text(text, max_chars=LIMIT) == text


def test_text_of_exactly_the_limit_is_accepted() -> None:
    assert check_text("a" * LIMIT, max_chars=LIMIT) == "a" * LIMIT


# --- rejected -------------------------------------------------------------------------------------


def test_empty_text_is_rejected_asking_for_a_non_blank_character() -> None:
    assert "empty; send at least one non-blank character" in rejected("")


@pytest.mark.parametrize("blank", [" ", "\t\n  \r\n", "\u00a0\u2003"])
def test_whitespace_only_text_is_rejected_as_empty(blank: str) -> None:
    assert "is empty" in rejected(blank)


def test_text_over_the_limit_says_its_length_the_limit_and_the_setting() -> None:
    detail = rejected("a" * (LIMIT + 1))
    assert f"has {LIMIT + 1} characters; the limit is {LIMIT}" in detail
    assert "INFERQ_MAX_TEXT_CHARS" in detail


def test_nul_byte_is_rejected_with_its_position() -> None:
    assert "NUL byte at position 2; remove it" in rejected("ab\x00cd")


@pytest.mark.parametrize(("surrogate", "code"), [("\ud800", "D800"), ("\udfff", "DFFF")])
def test_lone_surrogate_is_rejected_asking_for_valid_utf8(surrogate: str, code: str) -> None:
    detail = rejected(f"x{surrogate}")
    assert f"lone surrogate (U+{code}) at position 1" in detail
    assert "send valid UTF-8" in detail


@pytest.mark.parametrize(
    ("char", "code"), [("\x07", "0007"), ("\x1b", "001B"), ("\x7f", "007F"), ("\x85", "0085")]
)
def test_control_character_is_rejected_naming_the_allowed_ones(char: str, code: str) -> None:
    detail = rejected(f"bell{char}")
    assert f"control character U+{code} at position 4" in detail
    assert "only tab, newline and carriage return are allowed" in detail


@pytest.mark.parametrize(
    ("value", "kind"), [(5, "int"), (None, "NoneType"), (b"bytes", "bytes"), (["a"], "list")]
)
def test_non_string_is_rejected_naming_its_type(value: object, kind: str) -> None:
    assert f"must be a string, got {kind}" in rejected(value)


def test_message_names_where_the_bad_text_was() -> None:
    assert rejected("", where="inputs[7]").startswith("inputs[7] ")


# --- a job's inputs -------------------------------------------------------------------------------


def test_empty_inputs_list_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="inputs is empty; send at least one text"):
        check_inputs([], limits())


def test_too_many_inputs_are_rejected_pointing_at_batches() -> None:
    with pytest.raises(InvalidInput, match=r"4 inputs in one job; the limit is 3") as caught:
        check_inputs(["a", "b", "c", "d"], limits())
    assert "/v1/batches" in caught.value.detail


def test_exactly_the_maximum_number_of_inputs_is_accepted() -> None:
    assert check_inputs(["a", "b", "c"], limits()) == ["a", "b", "c"]


def test_bad_input_is_reported_by_its_index() -> None:
    with pytest.raises(InvalidInput, match=r"^inputs\[2\] contains a NUL byte"):
        check_inputs(["fine", "also fine", "bad\x00"], limits())


def test_input_length_uses_the_configured_limit() -> None:
    with pytest.raises(InvalidInput, match="the limit is 5"):
        check_inputs(["abcdef"], limits(max_text_chars=5))


# --- task -----------------------------------------------------------------------------------------


def test_registered_task_is_accepted() -> None:
    assert check_task("sentiment") == "sentiment"


def test_unknown_task_is_rejected_listing_the_available_tasks() -> None:
    with pytest.raises(UnknownTask) as caught:
        check_task("sentimnet")
    assert caught.value.status == 422
    assert (
        "unknown task 'sentimnet'; available tasks: embed, langid, ner, sentiment"
        in caught.value.detail
    )


def test_unknown_task_is_an_invalid_input() -> None:
    assert issubclass(UnknownTask, InvalidInput)
