-- Money is conserved: every account's opening balance is its balance plus its charges not refunded.
create table accounts (
    customer_id   text primary key,
    balance_cents bigint not null check (balance_cents >= 0),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- What payment did for each order; VOIDED marks an order cancelled before it was charged,
-- REFUND_FAILED a refund that could never be made (reason says why).
create table payments (
    order_id     uuid primary key,
    customer_id  text,
    amount_cents bigint not null default 0 check (amount_cents >= 0),
    status       text not null check (status in ('CHARGED', 'DECLINED', 'REFUNDED', 'REFUND_FAILED', 'VOIDED')),
    reason       text,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
