-- The ledger: every change to an account's balance, append-only, one version per entry and
-- account (1, 2, 3, ...). amount_cents is what the entry adds to the balance (a charge is
-- negative), balance_after_cents the balance once it is applied. causation_id is the consumed
-- event's id, or an id generated for an HTTP command or the hold expiry worker.
-- accounts.balance_cents is a snapshot of the head, written in the same transaction;
-- accounts.version is the version it reflects (a writer appends previous + 1, so two writers
-- from the same version conflict on the primary key and one transaction fails).
create table ledger_entries (
    customer_id         text not null,
    version             bigint not null check (version >= 1),
    kind                text not null check (kind in ('OPENED', 'DEPOSITED', 'CHARGED', 'REFUNDED')),
    amount_cents        bigint not null,
    balance_after_cents bigint not null check (balance_after_cents >= 0),
    order_id            uuid,
    causation_id        uuid not null,
    occurred_at         timestamptz not null default clock_timestamp(),
    primary key (customer_id, version),
    check ((kind = 'OPENED') = (version = 1)),
    check (kind <> 'OPENED' or amount_cents = balance_after_cents),
    check ((order_id is not null) = (kind in ('CHARGED', 'REFUNDED'))),
    check (case kind
               when 'DEPOSITED' then amount_cents > 0
               when 'CHARGED' then amount_cents <= 0
               else amount_cents >= 0
           end)
);

-- GET /accounts/{customer_id}?as_of=: the last entry at or before a time.
create index ledger_entries_by_time on ledger_entries (customer_id, occurred_at);

create function ledger_entries_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'ledger_entries is append-only (% refused)', tg_op
        using errcode = 'restrict_violation';
end
$$;

create trigger ledger_entries_append_only
    before update or delete or truncate on ledger_entries
    for each statement execute function ledger_entries_append_only();

-- Accounts opened before the ledger: one OPENED entry with the balance they hold, dated when
-- that balance was last written (it has been their balance since; the ledger says nothing of
-- before).
alter table accounts add column version bigint;
insert into ledger_entries (customer_id, version, kind, amount_cents, balance_after_cents, causation_id, occurred_at)
select customer_id, 1, 'OPENED', balance_cents, balance_cents, gen_random_uuid(), updated_at
from accounts;
update accounts set version = 1;
alter table accounts alter column version set not null,
                     add constraint accounts_version_positive check (version >= 1);

-- Idempotency-Key of POST /accounts/{customer_id}/deposits, scoped to the customer: the first
-- request's body decides what a retry must match; version is the entry it appended. Pruned by
-- age (IDEMPOTENCY_KEY_RETENTION_MS).
create table deposit_idempotency_keys (
    customer_id     text not null,
    idempotency_key text not null,
    request         jsonb not null,
    version         bigint not null,
    created_at      timestamptz not null default now(),
    primary key (customer_id, idempotency_key),
    foreign key (customer_id, version) references ledger_entries (customer_id, version)
);
create index deposit_idempotency_keys_by_age on deposit_idempotency_keys using brin (created_at);
