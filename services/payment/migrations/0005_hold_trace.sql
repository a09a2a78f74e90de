-- The trace context a charge was made in, for the hold expiry worker to continue when it
-- refunds the charge (so the refund is part of the order's trace).
alter table payments add column if not exists traceparent text,
                     add column if not exists tracestate text;
