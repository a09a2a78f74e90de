-- A charge is a hold until order.confirmed settles it (confirmed_at) or order.cancelled refunds
-- it; one no decision reached within HOLD_TIMEOUT_MS is refunded with reason 'hold_expired'.
alter table payments add column if not exists confirmed_at timestamptz;
create index if not exists payments_holds_by_age on payments (created_at)
    where status = 'CHARGED' and confirmed_at is null;
