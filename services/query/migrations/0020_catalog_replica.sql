-- The catalog replica: every product as inventory last published it to `inventory.products`
-- (shared::replica into shared::state::ProductCatalog; offsets in `replica_offsets`), with
-- live availability for GET /catalog.
-- A record applies only over an older version of the same sku.
alter table catalog
    add column reserved         integer not null default 0,
    add column sold             integer not null default 0,
    add column version          bigint not null default 0,
    add column source_partition integer,
    add column source_offset    bigint,
    add column replicated_at    timestamptz not null default now();
