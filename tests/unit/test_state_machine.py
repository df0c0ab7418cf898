"""The job and item state machines (core/jobs/state.py): pure functions, no database, no model."""

from __future__ import annotations

import pytest

from core.errors import InvalidTransition
from core.jobs.state import (
    TERMINAL_ITEM,
    TERMINAL_JOB,
    ItemStatus,
    JobStatus,
    can_move_item,
    can_move_job,
    item_transition,
    job_transition,
    settled_job_status,
)

Q, R, S, F, C = (
    ItemStatus.QUEUED,
    ItemStatus.RUNNING,
    ItemStatus.SUCCEEDED,
    ItemStatus.FAILED,
    ItemStatus.CANCELLED,
)


# --- jobs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        (JobStatus.QUEUED, JobStatus.FAILED),
        (JobStatus.QUEUED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
    ],
)
def test_job_moves_forward_through_the_lifecycle(current: JobStatus, target: JobStatus) -> None:
    assert job_transition(current, target) is target


def test_job_transition_accepts_the_status_string_read_from_the_database() -> None:
    assert job_transition("running", JobStatus.SUCCEEDED) is JobStatus.SUCCEEDED


def test_cancelled_job_can_never_become_succeeded() -> None:
    with pytest.raises(InvalidTransition, match="cancelled cannot become succeeded"):
        job_transition(JobStatus.CANCELLED, JobStatus.SUCCEEDED)


@pytest.mark.parametrize("current", sorted(TERMINAL_JOB))
@pytest.mark.parametrize("target", list(JobStatus))
def test_terminal_job_states_are_final(current: JobStatus, target: JobStatus) -> None:
    assert not can_move_job(current, target)
    with pytest.raises(InvalidTransition):
        job_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.RUNNING, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.QUEUED),
        (JobStatus.RUNNING, JobStatus.RUNNING),
    ],
)
def test_job_never_moves_backwards_or_in_place(current: JobStatus, target: JobStatus) -> None:
    assert not can_move_job(current, target)


def test_forbidden_transition_maps_to_http_409_conflict() -> None:
    with pytest.raises(InvalidTransition) as caught:
        job_transition(JobStatus.SUCCEEDED, JobStatus.CANCELLED)
    assert caught.value.status == 409
    assert "succeeded" in caught.value.detail and "cancelled" in caught.value.detail


# --- items ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    [(Q, R), (Q, S), (Q, F), (Q, C), (R, Q), (R, R), (R, S), (R, F)],
)
def test_item_allowed_moves(current: ItemStatus, target: ItemStatus) -> None:
    assert item_transition(current, target) is target


def test_running_item_may_be_released_back_to_queued_for_a_retry() -> None:
    assert can_move_item(ItemStatus.RUNNING, ItemStatus.QUEUED)


def test_running_item_may_be_claimed_again_after_its_lease_expired() -> None:
    assert can_move_item(ItemStatus.RUNNING, ItemStatus.RUNNING)


@pytest.mark.parametrize("current", sorted(TERMINAL_ITEM))
@pytest.mark.parametrize("target", list(ItemStatus))
def test_terminal_item_states_are_final(current: ItemStatus, target: ItemStatus) -> None:
    with pytest.raises(InvalidTransition, match=f"an item that is {current}"):
        item_transition(current, target)


def test_queued_item_cannot_stay_queued() -> None:
    assert not can_move_item(ItemStatus.QUEUED, ItemStatus.QUEUED)


def test_unknown_status_string_is_rejected_not_treated_as_terminal() -> None:
    with pytest.raises(ValueError, match="'paused'"):
        can_move_job("paused", JobStatus.RUNNING)


# --- settling a job from its items ----------------------------------------------------------------


@pytest.mark.parametrize("pending", [Q, R])
def test_job_is_not_settled_while_any_item_is_pending(pending: ItemStatus) -> None:
    assert settled_job_status([S, F, pending]) is None


def test_job_whose_items_all_succeeded_succeeds() -> None:
    assert settled_job_status([S, S]) is JobStatus.SUCCEEDED


def test_job_whose_items_all_failed_fails() -> None:
    assert settled_job_status([F, F, F]) is JobStatus.FAILED


def test_job_with_partial_failures_succeeds_and_reports_them_per_input() -> None:
    assert settled_job_status([F, S, F]) is JobStatus.SUCCEEDED


def test_settled_status_accepts_plain_strings_from_a_group_by_query() -> None:
    assert settled_job_status(["failed", "failed"]) is JobStatus.FAILED
