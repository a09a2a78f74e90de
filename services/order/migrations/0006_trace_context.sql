-- The W3C trace context an order was placed in (shared::traces), so that work done for it later
-- outside any request or event (the saga deadline cancelling it) continues the order's trace.
-- Null: the order was placed outside any trace (no exporter, no incoming traceparent).
alter table orders
    add column traceparent text,
    add column tracestate text;
