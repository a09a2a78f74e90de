-- Events for orders this service does not know (lost in a restore or failover, or a forged
-- order.created): one row per order, kept apart from `orders` so no order is ever made up.
-- The first one was answered with order.cancelled so every participant releases what it holds.
create table orphan_events (
    order_id         uuid primary key,
    first_event_id   uuid not null,
    first_event_type text not null,
    first_source     text not null,
    events           bigint not null default 1,
    first_seen_at    timestamptz not null default now(),
    last_seen_at     timestamptz not null default now()
);
