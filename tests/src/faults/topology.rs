//! The services, the saga topics and who consumes what, as the fault harness sees them: read
//! from `shared::topology`, so a service added there is started, faulted and checked here too.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use shared::topology::{self, Service};

/// One service of `shared::topology::SERVICES`.
#[derive(Debug, Clone, Copy)]
pub struct Svc(&'static Service);

impl Svc {
    pub const ORDER: Svc = Svc(&topology::ORDER);
    pub const PAYMENT: Svc = Svc(&topology::PAYMENT);
    pub const INVENTORY: Svc = Svc(&topology::INVENTORY);
    pub const SHIPPING: Svc = Svc(&topology::SHIPPING);
    pub const QUERY: Svc = Svc(&topology::QUERY);

    /// Every service, in the topology's order.
    pub fn all() -> impl Iterator<Item = Svc> {
        topology::SERVICES.iter().map(Svc)
    }

    /// Short name: `order`, `payment`, ...
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Package and binary name, e.g. `order-service`.
    pub fn binary(self) -> &'static str {
        self.0.package
    }

    /// The saga topics (base names) it consumes.
    pub fn consumes(self) -> Vec<&'static str> {
        self.0
            .consumes
            .iter()
            .map(|topic| topic.base_name())
            .collect()
    }

    /// Its consumer group under a topic prefix (its `KAFKA_GROUP_ID`).
    pub fn group(self, prefix: &str) -> String {
        format!("{prefix}{}", self.0.group_id)
    }

    /// Its dead-letter topic under a topic prefix.
    pub fn dead_letter_topic(self, prefix: &str) -> String {
        self.0.dead_letter_topic(prefix)
    }

    /// The consumers of a saga topic (base name).
    pub fn consumers_of(topic: &str) -> Vec<Svc> {
        Svc::all()
            .filter(|svc| svc.consumes().contains(&topic))
            .collect()
    }
}

impl PartialEq for Svc {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Svc {}

impl Hash for Svc {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl PartialOrd for Svc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Svc {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(other.name())
    }
}

/// The saga topics (base names): the one each service owns (a read side owns none).
pub fn saga_topics() -> Vec<&'static str> {
    topology::SERVICES
        .iter()
        .filter_map(|service| service.owns)
        .map(|topic| topic.base_name())
        .collect()
}
