"""Tasks with queues of their own (INFERQ_TASK_QUEUES) and workers that serve only them
(`inferq worker --tasks`): where run-items go, what Celery declares, and what the command
refuses. The relay test writes real outbox rows (migrated PostgreSQL); the broker is a recorder
(``send_run_items`` replaced), so it sees exactly which queue each message would leave for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from core.broker import QUEUES, all_queues, celery_config, queues_for_tasks, run_queue
from core.config import Settings
from core.db.session import Database
from core.jobs import outbox


def settings_with(*tasks: str) -> Settings:
    return Settings(task_queues=list(tasks))


def test_a_task_with_its_own_queues_goes_there_at_each_priority() -> None:
    settings = settings_with("langid", "ner")
    assert run_queue("interactive", "langid", settings) == "interactive.langid"
    assert run_queue("bulk", "ner", settings) == "bulk.ner"


def test_other_tasks_and_the_default_setting_keep_the_shared_queues() -> None:
    assert run_queue("interactive", "sentiment", settings_with("langid")) == "interactive"
    assert run_queue("bulk", "langid", Settings()) == "bulk"
    assert run_queue("bulk", None, settings_with("langid")) == "bulk"


def test_an_unknown_priority_is_refused_rather_than_sent_to_a_queue_nobody_reads() -> None:
    with pytest.raises(ValueError, match="priority"):
        run_queue("urgent", "langid", settings_with("langid"))


def test_task_queues_are_read_from_the_environment_as_a_json_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERQ_TASK_QUEUES", '["ner", "langid"]')
    assert Settings().task_queues == ["ner", "langid"]
    with pytest.raises(ValidationError):
        Settings(task_queues=["lang.id"])


def test_celery_declares_the_dedicated_queues_and_the_backlog_reads_them() -> None:
    settings = settings_with("langid")
    declared = [queue.name for queue in celery_config(settings)["task_queues"]]
    for queue in ("interactive.langid", "bulk.langid", *QUEUES, "maintenance", "webhooks"):
        assert queue in declared
        assert queue in all_queues(settings)
    assert all_queues(Settings()) == (*QUEUES, "maintenance", "webhooks")


def test_a_task_worker_consumes_its_tasks_queues_only() -> None:
    settings = settings_with("ner", "langid")
    assert queues_for_tasks(["langid"], settings) == ["interactive.langid", "bulk.langid"]
    assert queues_for_tasks(["ner", "langid"], settings) == [
        "interactive.ner",
        "bulk.ner",
        "interactive.langid",
        "bulk.langid",
    ]


def test_a_task_worker_for_a_task_on_the_shared_queues_is_refused() -> None:
    with pytest.raises(ValueError, match="INFERQ_TASK_QUEUES"):
        queues_for_tasks(["sentiment"], settings_with("langid"))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, list[str]]]:
    messages: list[tuple[str, str | None, list[str]]] = []

    def record(_app: Any, entries: Sequence[Any], **kwargs: Any) -> None:
        messages.append((kwargs["queue"], kwargs["task"], [e.job_id for e in entries]))

    monkeypatch.setattr("core.jobs.outbox.send_run_items", record)
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    return messages


def test_the_relay_sends_a_dedicated_tasks_items_to_its_queue(
    pg_db: Database,
    monkeypatch: pytest.MonkeyPatch,
    sent: list[tuple[str, str | None, list[str]]],
) -> None:
    """Submission, retries, the sweeper and batch top-ups all write outbox rows whose queue is
    the job's priority: the relay is where the broker queue is chosen."""
    monkeypatch.setenv("INFERQ_TASK_QUEUES", '["langid"]')
    jobs = [("s-int", "sentiment", "interactive"), ("l-int", "langid", "interactive")]
    jobs += [("s-bulk", "sentiment", "bulk"), ("l-bulk", "langid", "bulk")]
    with pg_db.transaction() as session:
        for job, task, priority in jobs:
            outbox.add_run_items(
                session, job, [1], task=task, queue=priority, chunk_size=32, request_id=None
            )
    with pg_db.transaction() as session:
        assert outbox.relay(session) == 4

    assert sorted(sent) == [
        ("bulk", "sentiment", ["s-bulk"]),
        ("bulk.langid", "langid", ["l-bulk"]),
        ("interactive", "sentiment", ["s-int"]),
        ("interactive.langid", "langid", ["l-int"]),
    ]


def inferq_worker(*args: str, task_queues: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "INFERQ_TASK_QUEUES": task_queues}
    return subprocess.run(
        [sys.executable, "-m", "cli", "worker", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tasks", "sentiment"], "INFERQ_TASK_QUEUES"),
        (["--tasks", "topics"], "unknown tasks"),
        (["--tasks", "langid", "--queues", "interactive"], "not both"),
    ],
)
def test_the_worker_command_refuses_a_task_worker_that_would_consume_nothing_useful(
    args: list[str], says: str
) -> None:
    done = inferq_worker(*args, task_queues=json.dumps(["langid"]))
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in " ".join(done.stderr.split()), done.stderr


def test_a_task_worker_warms_only_its_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import _task_worker_queues

    monkeypatch.setenv("INFERQ_WARM_TASKS", '["sentiment"]')
    queues = _task_worker_queues("ner, langid", None, settings_with("ner", "langid"))
    assert queues == "interactive.ner,bulk.ner,interactive.langid,bulk.langid"
    assert Settings().warm_tasks == ["ner", "langid"]
