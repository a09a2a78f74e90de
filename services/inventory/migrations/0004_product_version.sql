-- Every change of a product increments its version; its state goes to `inventory.products`
-- (keyed by sku) in the same transaction, and replicas keep the highest version.
alter table products add column if not exists version bigint not null default 1;
