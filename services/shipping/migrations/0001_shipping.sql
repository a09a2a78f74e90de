-- What shipping did for each order; VOIDED marks an order cancelled before it was paid.
create table shipments (
    order_id   uuid primary key,
    status     text not null check (status in ('SCHEDULED', 'REJECTED', 'CANCELLED', 'VOIDED')),
    country    text,
    address    jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
