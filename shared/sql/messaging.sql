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

create table if not exists inbox (
    event_id     uuid primary key,
    event_type   text not null,
    topic        text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null,
    processed_at timestamptz not null default now()
);

create or replace function notify_outbox() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end
$$;

do $$
begin
    if not exists (select 1 from pg_trigger where tgname = 'outbox_notify') then
        create trigger outbox_notify after insert on outbox
            for each statement execute function notify_outbox();
    end if;
end
$$;
