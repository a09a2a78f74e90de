//! The topics: the saga's event topics, each owned by the service that publishes to it, and
//! the compacted state topics that carry the current state of an entity per key.

/// A topic owned by one service. Its full name may carry a deployment prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Order,
    Inventory,
    Payment,
    Shipping,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::Order,
        Topic::Inventory,
        Topic::Payment,
        Topic::Shipping,
    ];

    /// The base name, without prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::Order => "order.events",
            Topic::Inventory => "inventory.events",
            Topic::Payment => "payment.events",
            Topic::Shipping => "shipping.events",
        }
    }

    /// The full name with the configured prefix.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.base_name())
    }
}

/// The dead-letter topic of one consumer (service): messages it could not process, with the
/// original bytes and headers plus the error and where they came from.
pub fn dead_letter_topic(prefix: &str, service: &str) -> String {
    format!("{prefix}{service}.dlq")
}

/// A compacted state topic: the latest record per key is the entity's current state (a null
/// value, a tombstone, deletes it). Published by one service, replicated by others
/// (`shared::replica`); the topology says who does what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateTopic {
    /// Inventory's products, keyed by sku (`shared::state::ProductState`).
    Products,
}

impl StateTopic {
    pub const ALL: [StateTopic; 1] = [StateTopic::Products];

    /// The base name, without prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            StateTopic::Products => "inventory.products",
        }
    }

    /// The full name with the configured prefix.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.base_name())
    }

    /// The topic configuration it is created with: compacted, so the log keeps the latest
    /// record of every key for ever and a fresh replica rebuilds from it.
    pub fn config(self) -> &'static [(&'static str, &'static str)] {
        STATE_TOPIC_CONFIG
    }
}

/// `cleanup.policy=compact` (what makes it a state topic); hourly segments and a small dirty
/// ratio so that Kafka's cleaner (which never touches the active segment) compacts a small
/// topic within hours rather than a week (`docker/kafka/create-topics.sh` says the same).
pub const STATE_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.1"),
    ("segment.ms", "3600000"),
];
