//! Applies every event of every topic to the views and to the analytics windows, in the
//! consumer's transaction.

use shared::events::Event;
use shared::{Envelope, EventHandler, HandlerError};
use sqlx::PgConnection;

use crate::analytics::Analytics;
use crate::views::{self, Table};

pub struct QueryEventHandler {
    pub analytics: Analytics,
}

impl EventHandler for QueryEventHandler {
    type Input = Event;

    /// Every event is part of some view: none is ignored.
    fn select(&self, event: Event) -> Option<Event> {
        Some(event)
    }

    /// Takes the views' lock shared, once per transaction: shared with every other live
    /// transaction; a rebuild takes it exclusively for its catch-up and swap (src/rebuild.rs).
    async fn lock_shared_rows(
        &self,
        conn: &mut PgConnection,
        _events: &[&Event],
    ) -> Result<(), sqlx::Error> {
        views::hold_live_lock(conn).await
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<(), HandlerError> {
        views::apply(conn, Table::Live, envelope).await?;
        self.analytics.apply(conn, envelope, event).await?;
        Ok(())
    }
}
