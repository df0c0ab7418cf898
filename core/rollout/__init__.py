"""Model rollouts: which version serves a task's primary tier (the champion), which serves a
deterministic share of inputs beside it (the canary), and which runs off the result path on the
same batches for comparison (the shadow). The state lives in PostgreSQL; every process reads it
through a short-lived cache, so a change reaches the workers within seconds, without a restart.

- ``state``: the Rollout value, routing by input hash, the per-process cache.
- ``changes``: promote, rollback, canary, shadow, stop (audited; the caller commits).
- ``stats``: what each version did during a revision, summed over workers.
- ``serving``: what a worker does after each batch (shadow runs, stats, metrics).
"""
