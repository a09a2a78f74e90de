-- Shipping scheduled the order. The participants' events come on separate topics, so the
-- shipment can reach the order service before the reservation or the charge it follows: the
-- order is confirmed once all three are in (a charge is recorded by `payment_method`).
alter table orders add column if not exists shipment_scheduled boolean not null default false;
