-- VOIDED shipments are pruned by age after INBOX_RETENTION_MS (startup.rs, voided_retention).
create index if not exists shipments_voided_by_age on shipments (updated_at) where status = 'VOIDED';
