-- The trace context a reservation was made in, for the hold expiry worker to continue when it
-- releases the reservation (so the release is part of the order's trace).
alter table reservations add column if not exists traceparent text,
                         add column if not exists tracestate text;
