-- Real-time analytics (src/analytics): event-time tumbling windows over every saga event.
-- The consumer writes `analytics_orders` and `analytics_deltas` in the transaction that holds
-- the event's inbox row and the partition's `consumer_offsets`, so window state and consumed
-- offsets commit together; the analytics worker folds the deltas into `analytics_cells`.

-- What is known about each order so far (window::OrderFacts as JSON).
create table analytics_orders (
    order_id   uuid primary key,
    facts      jsonb not null default '{}',
    updated_at timestamptz not null default now()
);

-- Changes to window cells, appended by consumer transactions: plain inserts, so partitions
-- applied at the same time never wait on one another for a shared counter. A cell's value is
-- its row in `analytics_cells` plus its pending deltas; folding moves them atomically.
create table analytics_deltas (
    id           bigserial primary key,
    window_start timestamptz not null,
    metric       text not null,
    key          text not null,
    value        bigint not null,
    -- The causing event's occurred_at: the watermark follows the latest one.
    event_time   timestamptz not null
);

create index analytics_deltas_by_window on analytics_deltas (window_start);
create index analytics_deltas_by_event_time on analytics_deltas (event_time);

-- One value per (window, metric, key): see window::Metric for the names and keys.
create table analytics_cells (
    window_start timestamptz not null,
    metric       text not null,
    key          text not null,
    value        bigint not null,
    primary key (window_start, metric, key)
);

-- Every window that has data; `revision` grows each time a fold changes it (the stream of
-- window updates follows it, on every replica).
create sequence analytics_revision;

create table analytics_windows (
    window_start timestamptz primary key,
    revision     bigint not null
);

create index analytics_windows_by_revision on analytics_windows (revision);

-- The latest event time folded so far (pending deltas may hold later ones).
create table analytics_watermark (
    singleton      boolean primary key default true check (singleton),
    max_event_time timestamptz
);

insert into analytics_watermark (singleton, max_event_time) values (true, null);
