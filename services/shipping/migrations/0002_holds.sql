-- A scheduled shipment is a hold until order.confirmed makes it final (confirmed_at) or
-- order.cancelled cancels it; one no decision reached within HOLD_TIMEOUT_MS is cancelled with
-- reason 'hold_expired'.
alter table shipments add column if not exists confirmed_at timestamptz;
alter table shipments add column if not exists reason text;
create index if not exists shipments_holds_by_age on shipments (created_at)
    where status = 'SCHEDULED' and confirmed_at is null;
