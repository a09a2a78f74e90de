-- Shipping scheduled the order before its reservation reached the order service (they come on
-- separate topics): the order is confirmed once the reservation, and so its total, is known.
alter table orders add column if not exists shipment_scheduled boolean not null default false;
