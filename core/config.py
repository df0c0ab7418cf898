"""All configuration in one typed place: environment variables with the INFERQ_ prefix.

Embedded mode is the default: a SQLite file under ``data_dir`` and Celery's in-memory transport
with a worker inside the same process. Setting ``INFERQ_DATABASE_URL`` (PostgreSQL) and
``INFERQ_BROKER_URL`` (Redis) switches to distributed mode with no code path of its own.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TierConfig(BaseModel):
    tier: Literal["primary", "fallback", "rules"]
    adapter: str = Field(pattern=r"^[\w.]+:\w+$", description="module.path:ClassName")


class TaskConfig(BaseModel):
    description: str = ""
    chain: list[TierConfig] = Field(min_length=1)


class BatchPolicy(BaseModel):
    """How a worker forms one micro-batch for a task, and how the engine cuts it into passes.

    A worker flushes a micro-batch at whichever of max_items, token_budget (estimated tokens of
    its inputs) or max_wait_ms comes first. The engine then sorts the batch by length and cuts
    it into forward passes of at most forward_max_items rows and forward_token_budget padded
    tokens (rows x longest), choosing the cut with the least padded tokens plus
    forward_pass_overhead_tokens per pass (``core.inference.engine.plan_passes``). A batch wider
    than one pass is what makes sorting pay: on the 10,000 benchmark texts (SST-2 phrases, 19
    word pieces on average), passes of 64 inputs as they come compute 2.5x the real tokens;
    sorted windows of 512 cut into fixed passes of 32 rows compute 1.10x in 313 passes, the
    planned cut 1.05x in 268 (8 to 64 rows; all 10,000 sorted in passes of 64: 1.01x in 157).

    Measured on the shared 2-core VM (AVX512-BF16 EPYC, 2026-12-03; indicative), engine vs the
    bare model's best loop over the same 4,096 texts all sorted by length, interleaved batch by
    batch: the planned cut took the engine from 0.88-0.90 to 0.94-0.96 of that loop with one
    torch thread (a worker's pool process on this host) in bf16, 0.92 to 0.98 in fp32 (ONNX
    Runtime), 0.82-0.89 to 0.86-0.95 with two threads in bf16 (0.89 on all 10,000 texts).

    forward_pass_overhead_tokens (64): what a pass costs beyond its tokens. Fitting pass time =
    a + b x padded tokens over 1-128 rows and 8-64 tokens gave a/b = 46 tokens (torch bf16, one
    thread), 31 (torch fp32), 88 (bf16, two threads), 16 (ONNX fp32); cuts planned with 16 to
    192 ran within the noise of each other, so one default serves them all.
    forward_max_items (64, was 32): 32 beat 64 only for fixed cuts, which pad 1.22x at 64; with
    the planned cut 64 ran 1-3 % faster (0.941 vs 0.929 of the bare loop at one thread, 0.910
    vs 0.887 at two). The transformer tiers cut a longer call at their own batch size (64).
    max_items (512): windows of 1024 measured about 5 % faster at two threads, but an
    interactive input may wait for the batch in flight, and that would double it.
    """

    max_items: int = Field(default=512, ge=1)
    max_wait_ms: float = Field(default=25.0, ge=0)
    token_budget: int = Field(default=32768, ge=16)
    forward_max_items: int = Field(default=64, ge=1)
    forward_token_budget: int = Field(default=4096, ge=16)
    forward_pass_overhead_tokens: int = Field(default=64, ge=0)
    # A tier that has not finished a batch by then hands what is left to the next tier.
    deadline_seconds: float = Field(default=30.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERQ_", env_file=".env", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = None
    broker_url: str = "memory://localhost/"
    cache_url: str | None = None

    # Keys are optional only where nothing but this process can reach the database.
    require_api_keys: bool | None = None
    # How long an API process trusts a key it has accepted (a revoked key works this long more).
    api_key_cache_seconds: float = Field(default=10.0, ge=0)

    # JWT bearer tokens beside API keys (OAuth2 resource server; core.security.tokens). Tokens
    # are accepted once a verification key is set: INFERQ_JWT_PUBLIC_KEYS (a PEM or JWKS file,
    # or PEM text; RS256/ES256/EdDSA) and/or INFERQ_JWT_SECRET (HS256).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_public_keys: str | None = None
    jwt_secret: str | None = Field(default=None, repr=False)
    jwt_tenant_claim: str = "sub"
    jwt_leeway_seconds: float = Field(default=30.0, ge=0)

    # Rate limits per tenant and route class (a scope name, or "default" for the rest), shared
    # by every API process through Redis (INFERQ_RATE_LIMIT_STORAGE_URL, default the cache's).
    # Several limits for one class: "jobs:write=20/second,600/minute". Empty: no rate limits.
    rate_limits: str = "jobs:write=600/minute;batches:write=20/minute;default=3000/minute"
    rate_limit_storage_url: str | None = None
    # Inputs of a tenant's unfinished jobs (queued or running) at most; a submit that would go
    # over is refused with 429, and Kafka ingest pauses. None: no quota.
    max_pending_inputs_per_tenant: int | None = Field(default=2_000_000, ge=1)

    # Browser origins allowed to call the API (comma-separated). Empty: no CORS headers at all.
    cors_origins: str = ""

    # Edge limits: what a caller may send in one request.
    max_inputs_per_job: int = Field(default=256, ge=1)
    max_text_chars: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    max_wait_seconds: float = Field(default=30.0, ge=0)

    # The bulk door (POST /v1/batches, `inferq process`, the nightly inbox; core.jobs.batches).
    max_batch_lines: int = Field(default=1_000_000, ge=1)
    max_batch_body_bytes: int = Field(default=4 * 1024**3, ge=1024)
    # A batch's lines run as jobs of this many inputs; the dispatcher keeps at most
    # batch_jobs_in_flight of them queued or running per batch, so batches of several tenants
    # progress side by side instead of one after the other (fair share).
    batch_job_size: int = Field(default=256, ge=1)
    batch_jobs_in_flight: int = Field(default=8, ge=1)
    # Lines are written this many at a time, and sorted by length within each window before
    # they are cut into jobs, so the inputs of a micro-batch have about the same length (less
    # padding). batch_sort_by_length=false keeps input order (jobs are still cut per window).
    batch_sort_window: int = Field(default=8192, ge=1)
    batch_sort_by_length: bool = True
    batch_completion_window: str = "24h"
    batch_max_completion_window: str = "7d"
    # `inferq batches ...` talks to this API with this key (users whose files are elsewhere).
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = Field(default=None, repr=False)
    # Nightly inbox: "/srv/inbox" (task sentiment) or "sentiment=/srv/in-a;embed=/srv/in-b".
    inbox_dir: str = ""
    outbox_dir: Path | None = None  # default: an "outbox" folder beside each inbox
    nightly_cron: str = "0 2 * * *"  # minute hour day-of-month month day-of-week
    timezone: str = "UTC"
    # A file is picked up once it has not changed for this long (it may still be copying).
    inbox_settle_seconds: float = Field(default=60.0, ge=0)
    # Nightly batches: how often beat writes the results files of the ones that ended.
    nightly_collect_interval_seconds: float = Field(default=30.0, gt=0)

    # Work distribution. One broker message carries at most `chunk_size` item ids of one job.
    chunk_size: int = Field(default=32, ge=1)
    lease_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued item whose message was sent this long ago and never claimed is sent again.
    redispatch_after_seconds: float = Field(default=300.0, gt=0)
    relay_interval_seconds: float = Field(default=2.0, gt=0)
    sweep_interval_seconds: float = Field(default=15.0, gt=0)
    # The backlog metrics on the API's /metrics (core.telemetry.backlog): how long one reading of
    # PostgreSQL and Redis serves scrapes, and the time constant of the finishing rate's EWMA.
    backlog_cache_seconds: float = Field(default=5.0, ge=0)
    backlog_rate_window_seconds: float = Field(default=300.0, gt=0)
    # Redis redelivers an unacked message after this long; keep it far above the longest batch.
    visibility_timeout_seconds: int = Field(default=3600, ge=60)
    # Pool processes per worker. Unset: one per core on CPU (small matrices parallelise better
    # across batches than inside one), one per GPU process on CUDA (one model per GPU process).
    worker_concurrency: int | None = Field(default=None, ge=1)
    # API processes of `inferq serve` (distributed mode). One process is bound by the GIL to
    # about one core; unset: half the cores, at most 4 (the rest is for workers and the
    # database on a shared machine; on Kubernetes, scale API pods instead).
    api_workers: int | None = Field(default=None, ge=1)

    # Tasks added to, or replacing, the built-in registry (see core.inference.registry).
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)

    # Per task, e.g. INFERQ_BATCHING='{"sentiment": {"max_items": 256, "max_wait_ms": 10}}';
    # "default" applies to tasks without an entry of their own.
    batching: dict[str, BatchPolicy] = Field(default_factory=lambda: {"default": BatchPolicy()})

    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_recovery_seconds: float = Field(default=30.0, gt=0)
    # Operators force tiers open: "sentiment:primary,sentiment:fallback".
    circuit_force_open: str = ""

    cache_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # MLflow tracking of `models train --arch` runs (core.inference.tracking): the store is
    # MLFLOW_TRACKING_URI, else sqlite:///DATA_DIR/mlflow.db with artefacts in DATA_DIR/mlruns/.
    tracking: bool = True
    # Drift (core.telemetry.drift): the live window is the last this many primary-tier results
    # of each task, shared by every worker, compared with the artefact's reference profile.
    drift_window: int = Field(default=500, ge=10)
    # Model rollouts (core.rollout): how stale a process's view of a task's champion, canary
    # and shadow may be (workers pick a change up within this many seconds, no restart), and
    # how many trained versions a worker keeps loaded beside the shipped chain (least recently
    # used evicted). Trained versions are read from data_dir/models/TASK-ARCH/VERSION/.
    rollout_refresh_seconds: float = Field(default=5.0, ge=0)
    max_loaded_versions: int = Field(default=3, ge=1)

    # Encrypts stored secrets (webhook signing secrets) with AES-GCM. Any string: the key is
    # derived from it. Embedded mode generates one under data_dir when unset; distributed mode
    # needs it set, the same on every process.
    secret_key: str | None = Field(default=None, repr=False)
    # Webhooks. Delays in seconds before each attempt of one event: the first at once, then
    # after each failure (Svix's schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,36000"
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_max_response_bytes: int = Field(default=65_536, ge=0)
    # A job's event carries up to this many results; above it, a link to GET the job.
    webhook_max_results: int = Field(default=1000, ge=0)
    # CIDRs a webhook may reach although the SSRF guard blocks them (e.g. "127.0.0.0/8" for
    # development). Empty: only globally routable addresses.
    webhook_allowed_networks: str = ""
    webhook_concurrency: int = Field(default=16, ge=1)
    webhook_dispatch_interval_seconds: float = Field(default=2.0, gt=0)
    # A delivery whose task message was sent this long ago and never claimed is sent again.
    webhook_redispatch_after_seconds: float = Field(default=60.0, gt=0)
    # Base of the links put in webhook events (e.g. https://inferq.example.com); relative if unset.
    public_url: str = ""

    # Kafka door (`inferq ingest`): requests in, results out, what cannot be read to the DLQ.
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_group_id: str = "inferq-ingest"
    kafka_requests_topic: str = "inferq.requests"
    kafka_results_topic: str = "inferq.results"
    kafka_dlq_topic: str = "inferq.requests.dlq"
    # A stream is throughput work: its jobs wait behind interactive HTTP jobs unless told not to.
    kafka_priority: Literal["interactive", "bulk"] = "bulk"
    kafka_batch_size: int = Field(default=100, ge=1)
    kafka_poll_timeout_seconds: float = Field(default=1.0, gt=0)
    # Extra librdkafka properties: for every client (security, SASL) and for the consumer only
    # (timeouts). The offset and idempotence settings the invariants rest on cannot be overridden.
    kafka_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    kafka_consumer_options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    # Tasks whose models a worker loads and runs once before it takes work.
    warm_tasks: list[str] = Field(default_factory=lambda: ["sentiment"])
    # Tasks with queues of their own (JSON list, e.g. ["ner", "langid"]): their work goes to
    # interactive.<task> and bulk.<task>, served by `inferq worker --tasks ...` workers that scale
    # on their own; every other task shares interactive and bulk. The same on every process.
    task_queues: list[str] = Field(default_factory=list)

    device: str = "auto"
    # Matmul precision of the transformer tiers. auto: bf16 on CUDA cards that have it (else fp16)
    # and on CPUs with native bf16 instructions (AVX512-BF16 or AMX), fp32 elsewhere. Measured on
    # SST-2 test: fp32 and bf16 both 89.91 % (LoRA primary: 88.07 / 88.19 %); bf16 about 1.6x
    # the batched CPU throughput of fp32 (bench/results/precision.json).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Runtime of the transformer tiers. auto: ONNX Runtime on CPU where torch would run fp32 (it
    # is faster there at equal accuracy), torch on CUDA and on CPUs with native bf16; see
    # core.inference.onnx_transformer.choose_runtime for the rule and the figures behind it.
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    torch_threads: int | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    metrics_port: int = 9100
    # Flower's login for `inferq flower`, "user:password" (several: comma-separated). Unset: the
    # UI is open and Flower refuses its HTTP API.
    flower_basic_auth: str | None = Field(default=None, repr=False)
    # What one worker costs per hour (any currency): `inferq usage` prices model seconds with
    # these, the GPU rate for seconds spent in workers whose models run on a GPU.
    cost_per_worker_hour: float = Field(default=0.10, ge=0)
    cost_per_gpu_worker_hour: float = Field(default=1.20, ge=0)

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'inferq.db').resolve()}"

    @property
    def resolved_worker_concurrency(self) -> int:
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        if self.embedded or self.device.startswith("cuda"):  # embedded: one in-process worker
            return 1
        return max(1, os.cpu_count() or 1)

    @property
    def resolved_api_workers(self) -> int:
        if self.api_workers is not None:
            return self.api_workers
        if self.embedded:  # the API process also runs the one embedded worker
            return 1
        return max(1, min(4, (os.cpu_count() or 1) // 2))

    @property
    def resolved_cache_url(self) -> str | None:
        """Redis for the L1 result cache and shared circuit state: the broker's unless set."""
        if self.cache_url:
            return self.cache_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_is_seconds(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError as exc:
            raise ValueError("must be seconds separated by commas, e.g. 0,5,300") from exc
        if any(delay < 0 for delay in delays):
            raise ValueError("delays cannot be negative")
        return value

    @field_validator("task_queues")
    @classmethod
    def _task_names(cls, value: list[str]) -> list[str]:
        for name in value:  # a queue name is built from it: no dots, commas or blanks
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a task name")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks_are_cidrs(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip())  # ValueError names the bad one
        return value

    @property
    def webhook_schedule(self) -> list[float]:
        """Seconds before each attempt of one event: the first, then after each failure."""
        return [float(part) for part in self.webhook_retry_schedule.split(",")]

    def batch_policy(self, task: str) -> BatchPolicy:
        return self.batching.get(task) or self.batching.get("default") or BatchPolicy()

    @property
    def resolved_rate_limit_storage_url(self) -> str:
        return self.rate_limit_storage_url or self.resolved_cache_url or "memory://"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def api_keys_required(self) -> bool:
        if self.require_api_keys is not None:
            return self.require_api_keys
        return not self.embedded


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
