-- The replica of inventory's products, fed from the compacted topic `inventory.products`
-- (shared::replica into shared::state::ProductCatalog; its offsets are in `replica_offsets`):
-- names and prices shown when an order is placed, and the skus known to exist. `version` only grows; `source_partition` and
-- `source_offset` say which record it reflects.
create table catalog (
    sku              text primary key,
    name             text not null,
    price_cents      bigint not null,
    available        integer not null,
    reserved         integer not null default 0,
    sold             integer not null default 0,
    version          bigint not null,
    updated_at       timestamptz not null,
    source_partition integer not null,
    source_offset    bigint not null,
    replicated_at    timestamptz not null default now()
);
