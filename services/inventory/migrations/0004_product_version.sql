-- Every change of a product increments its version; its state goes to `inventory.products`
-- (keyed by sku) in the same transaction, and replicas keep the highest version.
alter table products add column if not exists version bigint not null default 1;

-- Products that existed before are published once, as `outbox::emit_state` writes a
-- `shared::state::ProductState`, so replicas learn of products that do not change again.
insert into outbox (event_id, topic, message_key, event_type, envelope)
select gen_random_uuid(), 'inventory.products', sku, 'inventory.product.v1',
       jsonb_build_object(
           'sku', sku, 'name', name, 'price_cents', price_cents, 'available', available,
           'reserved', reserved, 'sold', sold, 'version', version,
           'updated_at', to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
from products
order by sku;
