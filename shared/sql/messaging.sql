-- Messaging plumbing every service database carries: the transactional outbox and the inbox.
-- Applied at start-up (idempotently, under an advisory lock) before the service's migrations.

create table if not exists outbox (
    seq          bigserial primary key,
    event_id     uuid not null unique,
    topic        text not null,
    message_key  text not null,
    event_type   text not null,
    envelope     jsonb not null,
    created_at   timestamptz not null default now(),
    published_at timestamptz
);

create index if not exists outbox_unpublished on outbox (seq) where published_at is null;

-- A row the broker refused every time is parked: failed_at and failure say when and why, and
-- the relay skips it. `update outbox set failed_at = null, failure = null where seq = ...`
-- queues it again.
alter table outbox add column if not exists failed_at timestamptz;
alter table outbox add column if not exists failure text;
create index if not exists outbox_failed on outbox (seq) where failed_at is not null;

create table if not exists inbox (
    event_id     uuid primary key,
    event_type   text not null,
    topic        text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null,
    processed_at timestamptz not null default now()
);

-- Earlier versions notified the relay from a trigger, inside the writing transaction; that
-- serialised every commit on PostgreSQL's notification lock. Writers now signal after commit.
drop trigger if exists outbox_notify on outbox;
drop function if exists notify_outbox();
