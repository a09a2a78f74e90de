-- Idempotency keys are pruned by age (IDEMPOTENCY_KEY_RETENTION_MS): a BRIN index finds the old
-- ones in this append-only table at little cost per insert.
create index idempotency_keys_by_age on idempotency_keys using brin (created_at);
