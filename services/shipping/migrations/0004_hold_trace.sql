-- The trace context a shipment was scheduled in, for the hold expiry worker to continue when
-- it cancels the shipment (so the cancellation is part of the order's trace).
alter table shipments add column if not exists traceparent text,
                      add column if not exists tracestate text;
