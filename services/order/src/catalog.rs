//! The order service's replica of inventory's products (`catalog`, fed from the compacted topic
//! `inventory.products` by `shared::replica`), and how `POST /orders` uses it: every line is
//! enriched with the product's name and the unit price shown at placement, and a sku the
//! replica has never seen is refused with 422 `unknown_product`, but only when the replica is
//! known to be current (the saga, through inventory's reservation, stays authoritative).
//!
//! For a sku missing from the replica, [`Catalog::check`] waits `CATALOG_SETTLE_MS` (so that a
//! product inventory committed just before reaches the topic: its relay publishes within
//! milliseconds), then reads every partition's high watermark and waits up to
//! `CATALOG_CATCH_UP_MS` for the replica to apply up to it, and looks again; [`decide`] then
//! refuses only a sku still missing from a replica that did catch up. A known sku costs one
//! indexed read and no broker round trip. The check runs before admission control, so a wait
//! holds no `MAX_IN_FLIGHT_ORDERS` slot, and at most [`MAX_CATALOG_WAITS`] requests wait at
//! once: when none is free the order is accepted without waiting and the saga decides (a flood
//! of made-up skus costs neither real orders' slots nor a watermark read each).
//!
//! The race that remains: a product whose state inventory committed but its relay had not yet
//! published when the watermarks were read (`CATALOG_SETTLE_MS` after the order came in; the
//! relay stalled, the broker slow to acknowledge, inventory's outbox backed up) is refused
//! although it exists. The settle time bounds how stale the topic may be for a new sku: a
//! product created more than `CATALOG_SETTLE_MS` before the order, with its relay healthy, is
//! always found.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shared::replica::Replica;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most `POST /orders` requests waiting for the replica at once.
pub const MAX_CATALOG_WAITS: usize = 16;

/// What the replica says about a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
    pub price_cents: i64,
}

/// The outcome of the check of an order's skus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place the order (the listings found, possibly not all of its skus).
    Accept,
    /// The replica is current and has never seen these skus: 422 `unknown_product`.
    RejectUnknown(Vec<String>),
}

/// How the wait for the replica went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The replica reached the watermarks read after the settle.
    CaughtUp,
    /// It did not within `CATALOG_CATCH_UP_MS`.
    NotCurrent,
    /// [`MAX_CATALOG_WAITS`] requests were already waiting: this one did not.
    NoneFree,
}

/// The rule: skus still missing once the wait is over are refused only if the replica reached
/// the watermarks read after the settle; otherwise the saga decides.
pub fn decide(still_missing: &[String], wait: Wait) -> Decision {
    if still_missing.is_empty() || wait != Wait::CaughtUp {
        Decision::Accept
    } else {
        Decision::RejectUnknown(still_missing.to_vec())
    }
}

/// The replica and the waits of the check (`CATALOG_SETTLE_MS`, `CATALOG_CATCH_UP_MS`).
#[derive(Clone)]
pub struct Catalog {
    /// `None`: no replica runs (the router alone, in tests without a broker); never refuses.
    replica: Option<Replica>,
    settle: Duration,
    catch_up: Duration,
    waits: Arc<Semaphore>,
}

impl Catalog {
    pub fn new(replica: Option<Replica>, settle: Duration, catch_up: Duration) -> Self {
        Self {
            replica,
            settle,
            catch_up,
            waits: Arc::new(Semaphore::new(MAX_CATALOG_WAITS)),
        }
    }

    /// A place among the [`MAX_CATALOG_WAITS`] waiting requests, if one is free (never waits).
    fn try_wait(&self) -> Option<OwnedSemaphorePermit> {
        self.waits.clone().try_acquire_owned().ok()
    }

    /// Looks `skus` up; for any missing, waits as the module says and looks again. Returns
    /// what the replica lists and the decision.
    pub async fn check(
        &self,
        pool: &PgPool,
        skus: &[&str],
    ) -> Result<(BTreeMap<String, Listing>, Decision), sqlx::Error> {
        let mut found = lookup(pool, skus).await?;
        let missing = |found: &BTreeMap<String, Listing>| -> Vec<String> {
            skus.iter()
                .filter(|sku| !found.contains_key(**sku))
                .map(|sku| (*sku).to_owned())
                .collect()
        };
        if missing(&found).is_empty() {
            return Ok((found, Decision::Accept));
        }
        let Some(replica) = &self.replica else {
            return Ok((found, Decision::Accept));
        };
        let wait = match self.try_wait() {
            Some(_waiting) => {
                tokio::time::sleep(self.settle).await;
                let wait = if replica.wait_current(self.catch_up).await {
                    Wait::CaughtUp
                } else {
                    Wait::NotCurrent
                };
                let again: Vec<String> = missing(&found);
                let again: Vec<&str> = again.iter().map(String::as_str).collect();
                found.extend(lookup(pool, &again).await?);
                wait
            }
            None => Wait::NoneFree,
        };
        let decision = decide(&missing(&found), wait);
        metrics::counter!("sagashop_catalog_checks_total", "outcome" => match (&decision, wait) {
            (Decision::RejectUnknown(_), _) => "unknown_product",
            (Decision::Accept, Wait::CaughtUp) => "found_after_catch_up",
            (Decision::Accept, Wait::NotCurrent) => "not_current",
            (Decision::Accept, Wait::NoneFree) => "no_wait_free",
        })
        .increment(1);
        Ok((found, decision))
    }
}

async fn lookup(pool: &PgPool, skus: &[&str]) -> Result<BTreeMap<String, Listing>, sqlx::Error> {
    let unique: BTreeSet<&str> = skus.iter().copied().collect();
    let unique: Vec<&str> = unique.into_iter().collect();
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("select sku, name, price_cents from catalog where sku = any($1)")
            .bind(&unique)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, name, price_cents)| (sku, Listing { name, price_cents }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skus(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn every_sku_found_is_accepted_whether_or_not_the_replica_is_current() {
        for wait in [Wait::CaughtUp, Wait::NotCurrent, Wait::NoneFree] {
            assert_eq!(decide(&[], wait), Decision::Accept);
        }
    }

    #[test]
    fn a_sku_missing_from_a_current_replica_is_refused() {
        assert_eq!(
            decide(&skus(&["GHOST", "NOPE"]), Wait::CaughtUp),
            Decision::RejectUnknown(skus(&["GHOST", "NOPE"]))
        );
    }

    #[test]
    fn a_sku_missing_from_a_replica_that_did_not_catch_up_goes_to_the_saga() {
        assert_eq!(
            decide(&skus(&["NEW-1"]), Wait::NotCurrent),
            Decision::Accept
        );
    }

    #[test]
    fn a_sku_missing_while_every_wait_is_taken_goes_to_the_saga() {
        assert_eq!(decide(&skus(&["GHOST"]), Wait::NoneFree), Decision::Accept);
    }

    #[test]
    fn at_most_max_catalog_waits_requests_wait_and_a_finished_one_frees_its_place() {
        let catalog = Catalog::new(None, Duration::ZERO, Duration::ZERO);
        let waiting: Vec<_> = (0..MAX_CATALOG_WAITS)
            .map(|_| catalog.try_wait().expect("a free place"))
            .collect();
        assert!(catalog.try_wait().is_none());
        drop(waiting);
        assert!(catalog.try_wait().is_some());
    }
}
