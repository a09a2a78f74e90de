create table orders (
    order_id            uuid primary key,
    customer_id         text not null,
    status              text not null check (status in ('PENDING', 'CONFIRMED', 'CANCELLED', 'FAILED')),
    items               jsonb not null,
    shipping_address    jsonb not null,
    total_cents         bigint,
    cancellation_reason text,
    failed_step         text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

create index orders_by_customer on orders (customer_id, order_id desc);
create index orders_by_status on orders (status, order_id desc);
create index orders_pending_by_age on orders (created_at) where status = 'PENDING';

-- Idempotency-Key, scoped to the customer: the first request's body decides what a retry must match.
create table idempotency_keys (
    customer_id     text not null,
    idempotency_key text not null,
    request         jsonb not null,
    order_id        uuid not null references orders (order_id),
    created_at      timestamptz not null default now(),
    primary key (customer_id, idempotency_key)
);

-- Every saga event this service emitted or consumed, per order.
create table order_timeline (
    seq         bigserial primary key,
    order_id    uuid not null references orders (order_id),
    event_id    uuid not null unique,
    event_type  text not null,
    source      text not null,
    occurred_at timestamptz not null
);

create index order_timeline_by_order on order_timeline (order_id, occurred_at, seq);
