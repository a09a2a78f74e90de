-- Messaging plumbing every service database carries: the transactional outbox and the inbox.
-- Applied at start-up (idempotently, under an advisory lock) before the service's migrations,
-- once per version of this text: `shared::db::prepare` records its digest in `messaging_schema`
-- and skips it when recorded, so an instance starting beside busy replicas locks no table.

-- Events not yet acknowledged by the broker, and only those: the relay reads them in `seq`
-- order on the primary key and moves each acknowledged row to `outbox_published`.
create table if not exists outbox (
    seq          bigserial primary key,
    event_id     uuid not null unique,
    topic        text not null,
    message_key  text not null,
    event_type   text not null,
    envelope     jsonb not null,
    created_at   timestamptz not null default now()
);

-- Events the broker acknowledged, kept for `OUTBOX_RETENTION_MS` (for inspection), then pruned
-- oldest first. Rows arrive in `published_at` order, so a BRIN index finds the old ones cheaply.
create table if not exists outbox_published (
    seq          bigint not null,
    event_id     uuid not null,
    topic        text not null,
    message_key  text not null,
    event_type   text not null,
    envelope     jsonb not null,
    created_at   timestamptz not null,
    published_at timestamptz not null default now()
);

-- A row the broker refused every time is parked: failed_at and failure say when and why, and
-- the relay skips it. `update outbox set failed_at = null, failure = null where seq = ...`
-- queues it again.
alter table outbox add column if not exists failed_at timestamptz;
alter table outbox add column if not exists failure text;
create index if not exists outbox_failed on outbox (seq) where failed_at is not null;

create index if not exists outbox_published_by_age on outbox_published using brin (published_at);

-- Earlier versions marked rows published in place (`update outbox set published_at = now()`),
-- which could never be a HOT update (the partial index `outbox_unpublished` depends on the
-- column) and left every published row in the outbox. Move the rows they marked out and drop the
-- index. The column stays, unused, so an older replica's relay keeps working until it is
-- replaced (it may publish a row the new relay also publishes: consumers drop the duplicate).
-- A row an older replica marks after this ran stays in `outbox`, where the new relay publishes
-- it again (a duplicate, dropped) and moves it.
do $$
begin
    if exists (select 1 from information_schema.columns
               where table_schema = current_schema() and table_name = 'outbox'
                 and column_name = 'published_at') then
        insert into outbox_published
            (seq, event_id, topic, message_key, event_type, envelope, created_at, published_at)
        select seq, event_id, topic, message_key, event_type, envelope, created_at, published_at
        from outbox where published_at is not null;
        delete from outbox where published_at is not null;
        drop index if exists outbox_unpublished;
    end if;
end
$$;

-- One row per event applied, kept for `INBOX_RETENTION_MS` (longer than the broker can
-- deliver the event again: see README.md, Retention), then pruned oldest first.
create table if not exists inbox (
    event_id     uuid primary key,
    event_type   text not null,
    topic        text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null,
    processed_at timestamptz not null default now()
);

create index if not exists inbox_by_age on inbox using brin (processed_at);

-- Earlier versions notified the relay from a trigger, inside the writing transaction; that
-- serialised every commit on PostgreSQL's notification lock. Writers now signal after commit.
drop trigger if exists outbox_notify on outbox;
drop function if exists notify_outbox();

-- The records of compacted state topics go through the outbox too (`outbox::emit_state`): a
-- null `envelope` is a tombstone (the entity was deleted). Altered only while still `not
-- null`: `alter table` takes the table's strongest lock, and this file runs at every start,
-- while other replicas write to the outbox (doing it every time deadlocked a second instance
-- starting beside a busy first one).
do $$
begin
    if exists (select 1 from information_schema.columns
               where table_schema = current_schema() and table_name = 'outbox'
                 and column_name = 'envelope' and is_nullable = 'NO') then
        alter table outbox alter column envelope drop not null;
    end if;
    if exists (select 1 from information_schema.columns
               where table_schema = current_schema() and table_name = 'outbox_published'
                 and column_name = 'envelope' and is_nullable = 'NO') then
        alter table outbox_published alter column envelope drop not null;
    end if;
end
$$;

-- The W3C trace context each event was written in (`shared::traces`): the relay sends it as the
-- record's `traceparent` / `tracestate` headers. Null: written outside any trace.
alter table outbox
    add column if not exists traceparent text,
    add column if not exists tracestate text;
alter table outbox_published
    add column if not exists traceparent text,
    add column if not exists tracestate text;

-- How far this database's replica of each state topic partition is (`shared::replica`): the
-- offset of the next record to apply, stored in the transaction that applies the records
-- before it. A service that replicates nothing leaves it empty.
create table if not exists replica_offsets (
    topic           text not null,
    kafka_partition integer not null,
    next_offset     bigint not null,
    updated_at      timestamptz not null default now(),
    primary key (topic, kafka_partition)
);

-- Where a consumer that opts in (`records_offsets`) is, per partition: written in the
-- transaction that applied the messages, so it says exactly what the database reflects.
create table if not exists consumer_offsets (
    topic           text not null,
    kafka_partition integer not null,
    next_offset     bigint not null,
    updated_at      timestamptz not null default now(),
    primary key (topic, kafka_partition)
);
