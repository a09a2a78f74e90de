-- VOIDED reservations are pruned by age after INBOX_RETENTION_MS (startup.rs, voided_retention).
create index if not exists reservations_voided_by_age on reservations (updated_at) where status = 'VOIDED';
