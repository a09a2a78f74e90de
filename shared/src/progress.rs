//! What the consumer is working on, per partition: the offset of the oldest message it has
//! taken and not finished, and since when. `/metrics` shows each partition's age and
//! `/health/ready` answers 503 once one is older than `CONSUMER_STUCK_AFTER_MS`.
//!
//! The consumer updates a partition's slot once per batch (and per message only on the
//! one-message path); a slot is allocated once, the first time its partition is seen.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared between the consumer loop (which writes) and the health endpoints (which read).
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Vec<Slot>>>);

struct Slot {
    topic: String,
    partition: i32,
    /// The offset of the oldest unfinished message, and when the consumer took it.
    busy: Option<(i64, Instant)>,
}

/// The partition whose unfinished message is the oldest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oldest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub age: Duration,
}

impl std::fmt::Display for Oldest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the consumer has been on {}[{}]@{} for {:.1} s",
            self.topic,
            self.partition,
            self.offset,
            self.age.as_secs_f64()
        )
    }
}

impl Progress {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The consumer's oldest unfinished message of `topic`[`partition`] is now `offset`; its
    /// clock keeps running while the offset stays the same.
    pub fn working_on(&self, topic: &str, partition: i32, offset: i64) {
        let mut slots = self.slots();
        let slot = match slots
            .iter_mut()
            .position(|slot| slot.partition == partition && slot.topic == topic)
        {
            Some(index) => &mut slots[index],
            None => {
                slots.push(Slot {
                    topic: topic.to_owned(),
                    partition,
                    busy: None,
                });
                slots.last_mut().expect("just pushed")
            }
        };
        if slot.busy.map(|(busy, _)| busy) != Some(offset) {
            slot.busy = Some((offset, Instant::now()));
        }
    }

    /// Everything the consumer took from `topic`[`partition`] is finished.
    pub fn idle(&self, topic: &str, partition: i32) {
        if let Some(slot) = self
            .slots()
            .iter_mut()
            .find(|slot| slot.partition == partition && slot.topic == topic)
        {
            slot.busy = None;
        }
    }

    /// Keeps only the partitions for which `keep(topic, partition)` holds (those still
    /// assigned): a partition a rebalance took is not this consumer's to finish.
    pub fn retain(&self, keep: impl Fn(&str, i32) -> bool) {
        self.slots()
            .retain(|slot| keep(&slot.topic, slot.partition));
    }

    /// Every partition seen, with the age of its oldest unfinished message (zero when idle).
    pub fn ages(&self) -> Vec<(String, i32, Duration)> {
        let now = Instant::now();
        self.slots()
            .iter()
            .map(|slot| {
                let age = slot.busy.map_or(Duration::ZERO, |(_, since)| now - since);
                (slot.topic.clone(), slot.partition, age)
            })
            .collect()
    }

    /// The oldest unfinished message, if there is one.
    pub fn oldest(&self) -> Option<Oldest> {
        let now = Instant::now();
        self.slots()
            .iter()
            .filter_map(|slot| {
                slot.busy.map(|(offset, since)| Oldest {
                    topic: slot.topic.clone(),
                    partition: slot.partition,
                    offset,
                    age: now - since,
                })
            })
            .max_by_key(|oldest| oldest.age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_while_the_offset_stays_and_restarts_when_it_moves() {
        let progress = Progress::default();
        assert_eq!(progress.oldest(), None);
        progress.working_on("t", 0, 5);
        progress.working_on("t", 1, 9);
        std::thread::sleep(Duration::from_millis(30));
        progress.working_on("t", 1, 10);
        progress.working_on("t", 0, 5);
        let oldest = progress.oldest().expect("busy");
        assert_eq!(
            (oldest.topic.as_str(), oldest.partition, oldest.offset),
            ("t", 0, 5)
        );
        assert!(oldest.age >= Duration::from_millis(30), "{oldest:?}");
        progress.idle("t", 0);
        let oldest = progress.oldest().expect("partition 1 is still busy");
        assert_eq!((oldest.partition, oldest.offset), (1, 10));
        assert!(oldest.age < Duration::from_millis(30), "{oldest:?}");
        progress.idle("t", 1);
        assert_eq!(progress.oldest(), None);
        let ages = progress.ages();
        assert_eq!(ages.len(), 2);
        assert!(ages.iter().all(|(_, _, age)| age.is_zero()));
    }

    #[test]
    fn a_partition_no_longer_assigned_is_forgotten() {
        let progress = Progress::default();
        progress.working_on("t", 0, 5);
        progress.working_on("t", 1, 9);
        progress.retain(|_, partition| partition == 1);
        let oldest = progress.oldest().expect("partition 1 is still busy");
        assert_eq!((oldest.partition, oldest.offset), (1, 9));
        assert_eq!(progress.ages().len(), 1);
    }
}
