-- Stock is conserved: every unit ever stocked is available, reserved or sold.
create table products (
    sku         text primary key,
    name        text not null,
    price_cents bigint not null check (price_cents >= 0),
    available   integer not null check (available >= 0),
    reserved    integer not null default 0 check (reserved >= 0),
    sold        integer not null default 0 check (sold >= 0),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- What inventory did for each order; VOIDED marks an order cancelled before it was seen,
-- RELEASE_FAILED a reservation that could never be released (reason says why).
create table reservations (
    order_id    uuid primary key,
    status      text not null check (status in ('RESERVED', 'RELEASED', 'RELEASE_FAILED', 'COMMITTED', 'REJECTED', 'VOIDED')),
    items       jsonb not null default '[]',
    total_cents bigint not null default 0,
    reason      text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
