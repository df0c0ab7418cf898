"""The bulk door through a real deployment: PostgreSQL, Redis, and `inferq serve|worker|beat`
as separate processes. Batches of fake-model tasks (tests/fakes.py, configured through
INFERQ_TASKS) keep the runs short; the last tests use the real sentiment model through
`inferq process` and the remote CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.conftest import Deployment, deployed
from tests.services import REPO, wait_for

pytestmark = pytest.mark.integration

NDJSON = {"Content-Type": "application/x-ndjson"}
TASKS = {
    "fast": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Healthy"}]},
    "paced": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Paced"}]},
}


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    inbox = tmp_path_factory.mktemp("inbox")
    env = {
        "INFERQ_TASKS": json.dumps(TASKS),
        "INFERQ_TEST_SECONDS_PER_TEXT": "0.003",
        "INFERQ_MAX_BATCH_LINES": "30000",
        "INFERQ_SWEEP_INTERVAL_SECONDS": "1",
        "INFERQ_INBOX_DIR": f"fast={inbox}",
        "INFERQ_NIGHTLY_COLLECT_INTERVAL_SECONDS": "1",
    }
    with deployed(tmp_path_factory.mktemp("bulk"), 9, **env) as running:
        yield running


def upload(
    client: httpx.Client, lines: list[Any], task: str = "fast", **params: str
) -> httpx.Response:
    body = b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )

    def chunks() -> Iterator[bytes]:  # streamed (chunked), as a large upload would be
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    return client.post(
        "/v1/batches", params={"task": task, **params}, headers=NDJSON, content=chunks()
    )


def wait_until_over(client: httpx.Client, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end: {batch}")


def result_lines(client: httpx.Client, batch_id: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/batches/{batch_id}/results", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_batch_runs_every_line_and_streams_results_in_input_order(bulk: Deployment) -> None:
    lines: list[Any] = [{"id": f"doc-{i}", "text": f"a good film {i}"} for i in range(3000)]
    lines[10] = b"{not json"
    lines[20] = {"id": "doc-20"}
    lines[30] = {"id": "doc-30", "text": "nul \x00 inside"}
    lines[40] = b'{"id": "doc-40", "text": "lone \\udc00 surrogate"}'
    lines[50] = {"id": "doc-1", "text": "the same id as line 2"}
    lines[60] = b"\xc3\x28 not utf-8"
    lines[70] = {"id": "doc-70", "text": "x" * 10_001}
    with bulk.client() as client:
        created = upload(client, lines)
        assert created.status_code == 202, created.text
        batch = created.json()
        assert batch["object"] == "batch" and batch["status"] in ("in_progress", "completed")
        assert batch["request_counts"]["total"] == 3000
        assert created.headers["location"] == f"/v1/batches/{batch['id']}"
        done = wait_until_over(client, batch["id"])
        results = result_lines(client, batch["id"])
        errors = result_lines(client, batch["id"], only="errors")

    assert done["status"] == "completed" and done["completed_at"] and done["finalizing_at"]
    assert done["request_counts"] == {
        "total": 3000,
        "completed": 2993,
        "failed": 7,
        "pending": 0,
        "cancelled": 0,
    }
    expected_ids = [f"doc-{i}" for i in range(3000)]
    expected_ids[10], expected_ids[60] = "11", "61"  # unreadable lines: their line number
    expected_ids[50] = "doc-1"  # the refused duplicate keeps the id it was sent with
    assert [line["id"] for line in results] == expected_ids
    codes = {line["line"]: line["error"]["code"] for line in errors}
    assert codes == {
        11: "invalid_json",
        21: "missing_text",
        31: "invalid_text",
        41: "invalid_text",
        51: "duplicate_id",
        61: "invalid_utf8",
        71: "invalid_text",
    }
    assert results[0]["result"]["label"] == "positive"
    assert set(results[0]["result"]) == {
        "label",
        "score",
        "scores",
        "model",
        "version",
        "tier",
        "degraded",
        "cached",
    }


def test_results_are_readable_while_the_batch_runs_and_say_they_are_not_complete(
    bulk: Deployment,
) -> None:
    with bulk.client() as client:
        batch = upload(client, [{"text": f"text {i}"} for i in range(4000)], task="paced").json()
        wait_for(
            lambda: (
                client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] > 0
            ),
            60,
            "the first lines to finish",
        )
        partial = client.get(f"/v1/batches/{batch['id']}/results")
        lines = [json.loads(line) for line in partial.text.splitlines()]
        assert partial.headers["inferq-results-complete"] == "false"
        assert partial.headers["inferq-batch-status"] == "in_progress"
        assert 0 < len(lines) < 4000
        numbers = [int(line["id"]) for line in lines]
        assert numbers == sorted(numbers)  # in input order, skipping what has not run
        client.post(f"/v1/batches/{batch['id']}/cancel")


def test_cancel_keeps_what_ran_and_cancels_the_rest(bulk: Deployment) -> None:
    with bulk.client() as client:
        batch = upload(client, [{"text": f"to cancel {i}"} for i in range(6000)], task="paced")
        batch_id = batch.json()["id"]
        wait_for(
            lambda: client.get(f"/v1/batches/{batch_id}").json()["request_counts"]["completed"] > 0,
            60,
            "some lines to run",
        )
        cancelled = client.post(f"/v1/batches/{batch_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] in ("cancelling", "cancelled")
        done = wait_until_over(client, batch_id)
        results = result_lines(client, batch_id)
        again = client.post(f"/v1/batches/{batch_id}/cancel")

    counts = done["request_counts"]
    assert done["status"] == "cancelled" and done["cancelled_at"]
    assert counts["completed"] > 0 and counts["cancelled"] > 0 and counts["pending"] == 0
    assert counts["completed"] + counts["cancelled"] == 6000
    assert sum("result" in line for line in results) == counts["completed"]
    assert {line["error"]["code"] for line in results if "error" in line} == {"cancelled"}
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_lines_unfinished_at_the_end_of_the_completion_window_expire(bulk: Deployment) -> None:
    with bulk.client() as client:
        created = upload(
            client,
            [{"text": f"slow {i}"} for i in range(8000)],
            task="paced",
            completion_window="3s",
        )
        assert created.json()["completion_window"] == "3s"
        done = wait_until_over(client, created.json()["id"], timeout=60)
        errors = result_lines(client, done["id"], only="errors")

    counts = done["request_counts"]
    assert done["status"] == "expired" and done["expired_at"]
    assert counts["pending"] == 0 and counts["failed"] > 0
    assert counts["completed"] + counts["failed"] == 8000
    assert {line["error"]["code"] for line in errors} == {"expired"}
    assert len(errors) == counts["failed"]


def test_a_small_batch_is_not_held_back_by_a_big_one(bulk: Deployment) -> None:
    """Fair share: another tenant's 500 lines finish while the 20,000 still run."""
    with bulk.client() as alice, bulk.client(bulk.other_key) as bob:
        big = upload(alice, [{"text": f"big {i}"} for i in range(20_000)], task="paced").json()
        wait_for(
            lambda: alice.get(f"/v1/batches/{big['id']}").json()["request_counts"]["completed"] > 0,
            60,
            "the big batch to start",
        )
        small = upload(bob, [{"text": f"small {i}"} for i in range(500)], task="paced").json()
        small_done = wait_until_over(bob, small["id"], timeout=120)
        big_then = alice.get(f"/v1/batches/{big['id']}").json()
        alice.post(f"/v1/batches/{big['id']}/cancel")

    assert small_done["status"] == "completed"
    # 20,000 lines take 60 s of model time; the small batch ended with most of them still to run.
    assert big_then["request_counts"]["pending"] > 10_000, big_then["request_counts"]


def test_bodies_that_are_not_batches_get_a_problem_and_write_nothing(bulk: Deployment) -> None:
    with bulk.client() as client:
        before = client.get("/v1/batches", params={"limit": 100}).json()["data"]
        wrong_type = client.post(
            "/v1/batches",
            params={"task": "fast"},
            content=b'{"text": "x"}\n',
            headers={"Content-Type": "application/json"},
        )
        not_ndjson = client.post(
            "/v1/batches",
            params={"task": "fast"},
            content=b"just some\nplain text\n",
            headers=NDJSON,
        )
        empty = client.post("/v1/batches", params={"task": "fast"}, content=b"", headers=NDJSON)
        binary = client.post(
            "/v1/batches", params={"task": "fast"}, content=bytes(range(256)) * 64, headers=NDJSON
        )
        too_many = upload(client, [{"text": "x"}] * 30_001)
        unknown = upload(client, [{"text": "x"}], task="no-such-task")
        bad_window = upload(client, [{"text": "x"}], completion_window="forever")
        bad_metadata = upload(client, [{"text": "x"}], metadata="[1, 2]")
        no_task = client.post("/v1/batches", content=b'{"text": "x"}\n', headers=NDJSON)
        after = client.get("/v1/batches", params={"limit": 100}).json()["data"]

    for response, code in (
        (wrong_type, 415),
        (not_ndjson, 400),
        (empty, 422),
        (binary, 400),
        (too_many, 413),
        (unknown, 422),
        (bad_window, 422),
        (bad_metadata, 422),
        (no_task, 422),
    ):
        assert response.status_code == code, (code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]
    assert len(after) == len(before)


def test_an_idempotency_key_answers_a_retry_with_the_same_batch(bulk: Deployment) -> None:
    key = {"Idempotency-Key": f"nightly-{uuid.uuid4()}"}
    lines = [{"id": str(i), "text": f"retry {i}"} for i in range(50)]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    with bulk.client() as client:
        params = {"task": "fast", "metadata": '{"run": "nightly"}'}
        first = client.post("/v1/batches", params=params, content=body, headers={**NDJSON, **key})
        again = client.post("/v1/batches", params=params, content=body, headers={**NDJSON, **key})
        other = client.post(
            "/v1/batches?task=fast",
            content=body + b'{"text": "one more"}\n',
            headers={**NDJSON, **key},
        )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["metadata"] == {"run": "nightly"}
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422


def test_batches_are_the_tenants_own_and_list_newest_first(bulk: Deployment) -> None:
    with bulk.client(bulk.other_key) as bob:
        mine = [upload(bob, [{"text": f"bob {n}"}]).json()["id"] for n in range(3)]
        first = bob.get("/v1/batches", params={"limit": 2}).json()
        second = bob.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    with bulk.client() as alice:
        stolen = alice.get(f"/v1/batches/{mine[0]}")
        stolen_results = alice.get(f"/v1/batches/{mine[0]}/results")
        stolen_cancel = alice.post(f"/v1/batches/{mine[0]}/cancel")
        listed = {b["id"] for b in alice.get("/v1/batches", params={"limit": 100}).json()["data"]}

    assert [b["id"] for b in first["data"]] == [mine[2], mine[1]]
    assert second["data"][0]["id"] == mine[0]
    assert stolen.status_code == stolen_results.status_code == stolen_cancel.status_code == 404
    assert not listed & set(mine)


def _batches_in_db(bulk: Deployment) -> int:
    with psycopg.connect(bulk.stack.env["INFERQ_DATABASE_URL"].replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM batches WHERE idempotency_key LIKE 'nightly:%'")
        return int(row.fetchone()[0])  # type: ignore[index]


def test_a_file_dropped_in_the_inbox_runs_once_and_its_results_appear_whole(
    bulk: Deployment,
) -> None:
    inbox = Path(bulk.stack.env["INFERQ_INBOX_DIR"].split("=", 1)[1])
    source = "".join(json.dumps({"id": f"n{i}", "text": f"night {i}"}) + "\n" for i in range(500))
    (inbox / "tonight.jsonl").write_text(source + "{broken\n", encoding="utf-8")
    (inbox / "copying.jsonl").write_text(source, encoding="utf-8")  # just written: not settled

    taken = bulk.stack.run("nightly", "run-now", "--settle-seconds", "5")
    assert "tonight.jsonl" not in taken  # modified under 5 s ago: it may still be copying
    time.sleep(5.5)
    (inbox / "copying.jsonl").touch()  # still being written
    taken = bulk.stack.run("nightly", "run-now", "--settle-seconds", "5")
    assert "tonight.jsonl" in taken and "copying.jsonl" not in taken
    (inbox / "copying.jsonl").unlink()
    results = inbox / "outbox" / "tonight.jsonl.results.jsonl"
    wait_for(results.exists, 60, "the results file")
    lines = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    errors = (inbox / "outbox" / "tonight.jsonl.errors.jsonl").read_text(encoding="utf-8")
    assert [line["id"] for line in lines] == [f"n{i}" for i in range(500)] + ["501"]
    assert json.loads(errors)["error"]["code"] == "invalid_json"
    assert (inbox / "processed" / "tonight.jsonl").exists()
    assert not (inbox / "tonight.jsonl").exists()

    batches = _batches_in_db(bulk)
    (inbox / "tonight-again.jsonl").write_text(source + "{broken\n", encoding="utf-8")
    taken = bulk.stack.run("nightly", "run-now", "--settle-seconds", "0")
    assert "already run" in taken
    assert _batches_in_db(bulk) == batches  # the same content is not run twice
    assert (inbox / "processed" / "tonight-again.jsonl").exists()
    assert not (inbox / "outbox" / "tonight-again.jsonl.results.jsonl").exists()


def test_inferq_process_killed_mid_run_resumes_without_running_or_writing_twice(
    bulk: Deployment, tmp_path: Path
) -> None:
    source, output = tmp_path / "reviews.csv", tmp_path / "results.jsonl"
    rows = "".join(f'r{i},"review number {i} , a paced one"\n' for i in range(6000))
    source.write_text("id,text\n" + rows, encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "cli",
        "process",
        str(source),
        "--task",
        "paced",
        "--output",
        str(output),
    ]
    first = subprocess.Popen(
        command,
        env=bulk.stack.env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: output.exists() and output.stat().st_size > 20_000, 90, "output to grow")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    partial = output.read_bytes().count(b"\n")

    subprocess.run(
        command, env=bulk.stack.env, cwd=REPO, check=True, timeout=180, capture_output=True
    )

    ids = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert 0 < partial < 6000
    assert ids == [f"r{i}" for i in range(6000)]  # complete, in order, nothing twice
    with psycopg.connect(bulk.stack.env["INFERQ_DATABASE_URL"].replace("+psycopg", "")) as conn:
        runs = conn.execute(
            "SELECT count(*), max(i.attempts) FROM job_items i JOIN batches b ON b.id = i.batch_id"
            " WHERE b.idempotency_key LIKE 'process:paced:%'"
        ).fetchone()
        batch_count = conn.execute(
            "SELECT count(*) FROM batches WHERE idempotency_key LIKE 'process:paced:%'"
        ).fetchone()
    assert runs == (6000, 1)  # one batch; no line ran twice
    assert batch_count == (1,)


def test_the_remote_cli_submits_waits_and_downloads(bulk: Deployment, tmp_path: Path) -> None:
    source, output = tmp_path / "docs.jsonl.gz", tmp_path / "out.jsonl"
    import gzip

    source.write_bytes(
        gzip.compress(
            "".join(
                json.dumps({"id": f"g{i}", "text": f"remote {i}"}) + "\n" for i in range(700)
            ).encode()
        )
    )
    env = {**bulk.stack.env, "INFERQ_API_URL": bulk.stack.api_url or "", "INFERQ_API_KEY": bulk.key}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "batches",
            "submit",
            str(source),
            "--task",
            "fast",
            "--wait",
            "--output",
            str(output),
        ],
        env=env,
        cwd=REPO,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    batch = json.loads(done.stdout.splitlines()[0])
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "cli", "batches", "status", batch["id"]],
            env=env,
            cwd=REPO,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout
    )
    ids = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert ids == [f"g{i}" for i in range(700)]
    assert status["status"] == "completed" and status["request_counts"]["completed"] == 700


def test_inferq_process_with_two_tasks_writes_each_line_once_with_both_results_and_resumes(
    bulk: Deployment, tmp_path: Path
) -> None:
    source, output = tmp_path / "two.jsonl", tmp_path / "two.results.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": f"two tasks {i}"}) + "\n" for i in range(900))
        + "{broken\n",
        encoding="utf-8",
    )
    command = [
        sys.executable, "-m", "cli", "process", str(source), "--task", "fast,paced",
        "--output", str(output),
    ]  # fmt: skip
    subprocess.run(
        command, env=bulk.stack.env, cwd=REPO, check=True, timeout=180, capture_output=True
    )
    again = subprocess.run(
        command, env=bulk.stack.env, cwd=REPO, check=True, timeout=180, capture_output=True,
        text=True,
    )  # fmt: skip

    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines[:900]] == [f"t{i}" for i in range(900)]
    assert len(lines) == 901  # written once, the rerun resumed and added nothing
    assert all(set(line["tasks"]) == {"fast", "paced"} for line in lines)
    assert {line["tasks"]["fast"]["result"]["model"] for line in lines[:900]} == {"healthy"}
    assert {line["tasks"]["paced"]["result"]["model"] for line in lines[:900]} == {"paced"}
    assert {task["error"]["code"] for task in lines[900]["tasks"].values()} == {"invalid_json"}
    assert "resumed" in again.stderr  # the summary table (stdout is for results)
    with psycopg.connect(bulk.stack.env["INFERQ_DATABASE_URL"].replace("+psycopg", "")) as conn:
        keys = conn.execute(
            "SELECT idempotency_key, total FROM batches WHERE idempotency_key LIKE 'process:%'"
            " AND metadata->>'file' = 'two.jsonl' ORDER BY idempotency_key"
        ).fetchall()
    assert [(key.split(":")[1], total) for key, total in keys] == [("fast", 901), ("paced", 901)]


def test_a_batch_of_two_tasks_over_http_merges_each_line_with_both_results(
    bulk: Deployment,
) -> None:
    lines: list[Any] = [{"id": f"m{i}", "text": f"two tasks over http {i}"} for i in range(400)]
    lines[7] = b"{broken"
    with bulk.client() as client:
        created = upload(client, lines, task="fast,paced")
        assert created.status_code == 202, created.text
        batch = created.json()
        assert batch["tasks"] == ["fast", "paced"] and batch["request_counts"]["total"] == 800
        done = wait_until_over(client, batch["id"])
        results = result_lines(client, batch["id"])
        errors = result_lines(client, batch["id"], only="errors")
        listed = [b["id"] for b in client.get("/v1/batches", params={"limit": 100}).json()["data"]]

    assert done["status"] == "completed"
    assert done["request_counts"] == {
        "total": 800,
        "completed": 798,
        "failed": 2,
        "pending": 0,
        "cancelled": 0,
    }
    expected = [f"m{i}" for i in range(400)]
    expected[7] = "8"
    assert [line["id"] for line in results] == expected
    assert all(list(line["tasks"]) == ["fast", "paced"] for line in results)
    assert {line["tasks"]["fast"]["result"]["model"] for line in results if line["id"] != "8"} == {
        "healthy"
    }
    assert {line["tasks"]["paced"]["result"]["model"] for line in results if line["id"] != "8"} == {
        "paced"
    }
    assert [line["id"] for line in errors] == ["8"]
    assert {part["error"]["code"] for part in errors[0]["tasks"].values()} == {"invalid_json"}
    with psycopg.connect(bulk.stack.env["INFERQ_DATABASE_URL"].replace("+psycopg", "")) as conn:
        children = [
            row[0]
            for row in conn.execute(
                "SELECT id::text FROM batches WHERE parent_id = %s ORDER BY task", (batch["id"],)
            )
        ]
    assert len(children) == 2 and not set(children) & set(listed) and batch["id"] in listed
