-- The order view: every event seen for an order (by event time, then id) and the columns
-- derived from them that reads filter and aggregate on. The full view is derived from `events`
-- by the projection (src/projection.rs) when it is read.
create table order_views (
    order_id      uuid primary key,
    customer_id   text,
    status        text not null check (status in ('PENDING', 'CONFIRMED', 'CANCELLED', 'FAILED')),
    reason        text,
    total_cents   bigint,
    created_at    timestamptz,
    last_event_at timestamptz,
    events        jsonb not null default '[]'
);

create index order_views_by_customer on order_views (customer_id, order_id desc);
create index order_views_by_status on order_views (status, order_id desc);
create index order_views_by_last_event on order_views (last_event_at);

-- Products as the catalog replica reports them (fed from `inventory.products`); order lines
-- take their product name from here when they are read.
create table catalog (
    sku         text primary key,
    name        text not null,
    price_cents bigint not null,
    available   integer not null default 0,
    updated_at  timestamptz not null default now()
);

-- Where the consumer is, per partition (`consumer_offsets`, from the shared messaging
-- schema, written with the views it applied): what every view response reports as `as_of`.
