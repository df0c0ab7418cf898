"""A tier whose model cannot load in a worker process — the report was a worker installed without
the `model` extra: "No module named 'transformers'" — is skipped for the rest of the chain,
remembered as down, counted, logged once, and reported to the API. Pure unit tests: fake adapters
below, in-process circuit breakers and tier reports; no database or broker."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import structlog
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from core.config import get_settings
from core.db.session import Database
from core.inference.availability import TierReports
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.engine import Failure, InferenceEngine, Output
from tests.fakes import Healthy

MISSING = "No module named 'transformers'"
HERE = "tests.unit.test_tier_unavailable"


class NoTransformers(Healthy):
    """A primary tier whose load() imports a package that is not installed."""

    name = "no-transformers"
    loads: ClassVar[list[str]] = []

    @classmethod
    def load(cls, device: str = "cpu") -> NoTransformers:
        cls.loads.append(device)
        raise ModuleNotFoundError(MISSING, name="transformers")


class NoVersionNoTransformers(NoTransformers):
    """Like NoTransformers, and its version is known only once loaded."""

    current_version = None  # type: ignore[assignment]


class UnreadableArtefact(Healthy):
    """Fails to load for a reason that may pass (a file being replaced): OSError."""

    name = "unreadable"
    loads: ClassVar[list[str]] = []
    failures_left: ClassVar[int] = 1_000_000

    @classmethod
    def load(cls, device: str = "cpu") -> UnreadableArtefact:
        cls.loads.append(device)
        if cls.failures_left > 0:
            cls.failures_left -= 1
            raise OSError("artefact file is being replaced")
        return cls()


@pytest.fixture(autouse=True)
def _fresh_fakes() -> None:
    # An earlier test may have configured structlog to print to a capture stream it has since
    # closed (configure_logging binds sys.stderr as it was then); these tests log errors.
    structlog.reset_defaults()
    NoTransformers.loads = []
    UnreadableArtefact.loads = []
    UnreadableArtefact.failures_left = 1_000_000


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register a task with a fresh name through INFERQ_TASKS, as operators configure chains."""

    def register(primary: str, fallback: str = "tests.fakes:Healthy") -> str:
        name = f"down-{uuid.uuid4().hex[:8]}"
        chain = [
            {"tier": "primary", "adapter": primary},
            {"tier": "fallback", "adapter": fallback},
        ]
        monkeypatch.setenv("INFERQ_TASKS", json.dumps({name: {"chain": chain}}))
        monkeypatch.setenv("INFERQ_WARM_TASKS", json.dumps([name]))
        get_settings.cache_clear()
        return name

    return register


def circuits() -> Circuits:
    return Circuits(CircuitPolicy(5, 30.0, frozenset()))


def fallbacks(task: str, tier: str, reason: str) -> float:
    labels = {"task": task, "tier": tier, "reason": reason}
    return REGISTRY.get_sample_value("inferq_fallbacks_total", labels) or 0.0


def test_a_tier_that_cannot_import_its_package_falls_back_with_degraded_results(
    task: Any,
) -> None:
    name = task(f"{HERE}:NoTransformers")
    outcomes = InferenceEngine("cpu", circuits=circuits()).run(name, ["good", "bad", "so good"])

    assert all(isinstance(o, Output) for o in outcomes), outcomes
    assert [(o.tier, o.degraded) for o in outcomes] == [("fallback", True)] * 3  # type: ignore[union-attr]
    assert fallbacks(name, "primary", "unavailable") == 3


def test_a_missing_package_is_tried_once_and_logged_once_as_an_error(task: Any) -> None:
    name = task(f"{HERE}:NoTransformers")
    # No back-off at all: an ImportError is still never retried in the same process.
    engine = InferenceEngine("cpu", circuits=circuits(), load_retry_seconds=0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            engine.run(name, ["good"])

    assert len(NoTransformers.loads) == 1
    down = [entry for entry in logs if entry["event"] == "tier_unavailable"]
    assert len(down) == 1, logs
    assert down[0]["log_level"] == "error"
    assert (down[0]["task"], down[0]["tier"], down[0]["error"]) == (name, "primary", MISSING)
    assert engine.unavailable() == {f"{name}:primary": MISSING}
    assert fallbacks(name, "primary", "unavailable") == 3


def test_a_load_failure_does_not_count_against_the_shared_circuit(task: Any) -> None:
    name = task(f"{HERE}:NoTransformers")
    engine = InferenceEngine("cpu", circuits=Circuits(CircuitPolicy(1, 30.0, frozenset())))
    engine.run(name, ["good"])

    # Other workers, which have the package, share this breaker: it must stay closed.
    assert engine.circuits is not None and engine.circuits.state(name, "primary") == "closed"
    assert fallbacks(name, "primary", "exception") == 0


def test_another_load_error_waits_for_its_back_off_before_the_next_load(task: Any) -> None:
    name = task(f"{HERE}:UnreadableArtefact")
    waiting = InferenceEngine("cpu", load_retry_seconds=3600)
    for _ in range(3):
        waiting.run(name, ["good"])
    assert len(UnreadableArtefact.loads) == 1

    UnreadableArtefact.loads.clear()
    retrying = InferenceEngine("cpu", load_retry_seconds=0)
    for _ in range(3):
        retrying.run(name, ["good"])
    assert len(UnreadableArtefact.loads) == 3


def test_a_tier_that_loads_again_serves_and_its_report_is_withdrawn(task: Any) -> None:
    name = task(f"{HERE}:UnreadableArtefact")
    UnreadableArtefact.failures_left = 1
    reports = TierReports(None)
    engine = InferenceEngine("cpu", reports=reports, load_retry_seconds=0)

    first = engine.run(name, ["good"])
    assert reports.unavailable([(name, "primary")]) == {
        (name, "primary"): ["artefact file is being replaced"]
    }
    second = engine.run(name, ["good"])

    assert [o.tier for o in first + second] == ["fallback", "primary"]  # type: ignore[union-attr]
    assert reports.unavailable([(name, "primary")]) == {}
    assert engine.unavailable() == {}


def test_an_input_no_tier_can_serve_fails_saying_which_tier_is_down(monkeypatch: Any) -> None:
    name = f"alone-{uuid.uuid4().hex[:8]}"
    chain = [{"tier": "primary", "adapter": f"{HERE}:NoTransformers"}]
    monkeypatch.setenv("INFERQ_TASKS", json.dumps({name: {"chain": chain}}))
    get_settings.cache_clear()
    outcome = InferenceEngine("cpu").run(name, ["hello"])[0]

    assert isinstance(outcome, Failure)
    assert outcome.reason == f"primary: unavailable ({MISSING})"


def test_warm_up_loads_what_can_load_and_names_what_cannot(task: Any) -> None:
    name = task(f"{HERE}:NoTransformers")
    engine = InferenceEngine("cpu")

    assert engine.warm_up([name]) == {f"{name}:primary": MISSING}
    assert engine.run(name, ["good"])[0].tier == "fallback"  # type: ignore[union-attr]
    assert len(NoTransformers.loads) == 1  # warm-up's failure was remembered


def test_the_cache_uses_the_primary_version_from_its_files_when_it_cannot_load(
    task: Any,
) -> None:
    name = task(f"{HERE}:NoTransformers")

    assert InferenceEngine("cpu").primary_version(name) == NoTransformers.version


def test_the_cache_is_skipped_when_an_unloadable_primary_cannot_tell_its_version(
    task: Any,
) -> None:
    name = task(f"{HERE}:NoVersionNoTransformers")

    assert InferenceEngine("cpu").primary_version(name) is None


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from workers import runtime

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    runtime.reset()
    yield
    runtime.reset()


def test_a_pool_child_without_torch_warms_what_it_can_and_logs_the_down_tier(
    task: Any, no_torch: None
) -> None:
    from workers.app import warm_up

    name = task(f"{HERE}:NoTransformers")
    with structlog.testing.capture_logs() as logs:
        warm_up()  # must not raise: a pool child that dies here is respawned to die again

    warm = next(entry for entry in logs if entry["event"] == "worker_warm")
    assert warm["torch_threads"] is None
    assert warm["unavailable"] == {f"{name}:primary": MISSING}


@pytest.fixture
def embedded_api(sqlite_db: Database) -> Iterator[TestClient]:
    from api.app import create_app
    from core.config import Settings

    settings = Settings(
        database_url=sqlite_db.url,
        broker_url="memory://localhost/",
        require_api_keys=False,
        log_format="console",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_readiness_and_models_say_which_tier_is_down_and_stay_ready(
    task: Any, embedded_api: TestClient
) -> None:
    name = task(f"{HERE}:NoTransformers")
    # Embedded mode: the API shares its process, and so its tier reports, with the worker.
    InferenceEngine("cpu", reports=TierReports(None)).run(name, ["good"])

    ready = embedded_api.get("/readyz")
    models = {m["task"]: m for m in embedded_api.get("/v1/models").json()["data"]}

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded"
    assert ready.json()["tiers"] == {f"{name}:primary": f"unavailable: {MISSING}"}
    availability = {t["tier"]: t["availability"] for t in models[name]["chain"]}
    assert availability == {"primary": f"unavailable: {MISSING}", "fallback": "ok"}
