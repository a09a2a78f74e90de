-- VOIDED charges are pruned by age after INBOX_RETENTION_MS (startup.rs, voided_retention).
create index if not exists payments_voided_by_age on payments (updated_at) where status = 'VOIDED';
