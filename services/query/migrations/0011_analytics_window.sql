-- The window length the analytics were built with: a window's start is a multiple of it, so
-- cells written with one length are wrong under another. Set on first start; a start with
-- another `ANALYTICS_WINDOW_MS` is refused (analytics::check_window).
alter table analytics_watermark add column window_ms bigint;
