-- How the order was paid, from `payment.charged` (v1 charges upcast to `account_balance`).
alter table orders add column if not exists payment_method text;
