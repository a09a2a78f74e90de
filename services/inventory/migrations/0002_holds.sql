-- A reservation is a hold until order.confirmed sells it (confirmed_at) or order.cancelled
-- releases it; one no decision reached within HOLD_TIMEOUT_MS is released with reason
-- 'hold_expired'.
alter table reservations add column if not exists confirmed_at timestamptz;
create index if not exists reservations_holds_by_age on reservations (created_at)
    where status = 'RESERVED';
