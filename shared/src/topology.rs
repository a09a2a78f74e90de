//! The services of Sagashop and how they are wired, declared once: xtask, the benchmark, the
//! tests and the packaging checks read this list instead of keeping their own
//! (`tests/tests/topology.rs` names every file that still misses a service).

use crate::topics::{dead_letter_topic, StateTopic, Topic};

/// One service: its names, its port, its database and the topics it publishes and reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Service {
    /// Short name: the `source` of its events, its compose service, `services/<name>/`.
    pub name: &'static str,
    /// Cargo package and binary name.
    pub package: &'static str,
    /// Default `HTTP_PORT`.
    pub http_port: u16,
    /// The topic it owns: the only one it publishes to. `None`: it publishes nothing (a read
    /// side such as `query`, which only consumes).
    pub owns: Option<Topic>,
    /// The topics its consumer subscribes to.
    pub consumes: &'static [Topic],
    /// Its database in the compose stack and under `cargo xtask up`.
    pub database: &'static str,
    /// Default Kafka consumer group (`KAFKA_GROUP_ID`); replicas share it.
    pub group_id: &'static str,
    /// The compacted state topics it publishes (through its outbox, keyed by entity).
    pub publishes_state: &'static [StateTopic],
    /// The state topics it keeps a local replica of (`shared::replica`; no consumer group).
    pub replicates: &'static [StateTopic],
}

impl Service {
    /// Its dead-letter topic, with the deployment's topic prefix.
    pub fn dead_letter_topic(&self, prefix: &str) -> String {
        dead_letter_topic(prefix, self.group_id)
    }

    /// Every state topic it uses (publishes or replicates), created at its start-up.
    pub fn state_topics(&self) -> impl Iterator<Item = StateTopic> + '_ {
        self.publishes_state
            .iter()
            .chain(self.replicates)
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
    }

    /// Whether its consumer reads `topic`.
    pub fn reads(&self, topic: Topic) -> bool {
        self.consumes.contains(&topic)
    }

    /// The PostgreSQL role that owns its database and applies its migrations
    /// (`DATABASE_MIGRATION_URL`), e.g. `order_owner`.
    pub fn owner_role(&self) -> String {
        format!("{}_owner", self.name)
    }

    /// The PostgreSQL role it runs with (`DATABASE_URL`): rows of its own tables only, e.g.
    /// `order_service`.
    pub fn runtime_role(&self) -> String {
        format!("{}_service", self.name)
    }

    /// Its Kafka user (SASL principal `User:<this>`) in the compose stack: its package name.
    pub fn kafka_user(&self) -> &'static str {
        self.package
    }
}

pub const ORDER: Service = Service {
    name: "order",
    package: "order-service",
    http_port: 8081,
    owns: Some(Topic::Order),
    consumes: &[Topic::Inventory, Topic::Payment, Topic::Shipping],
    database: "sagashop_order",
    group_id: "order-service",
    publishes_state: &[],
    replicates: &[StateTopic::Products],
};

pub const PAYMENT: Service = Service {
    name: "payment",
    package: "payment-service",
    http_port: 8082,
    owns: Some(Topic::Payment),
    consumes: &[Topic::Inventory, Topic::Order],
    database: "sagashop_payment",
    group_id: "payment-service",
    publishes_state: &[],
    replicates: &[],
};

pub const INVENTORY: Service = Service {
    name: "inventory",
    package: "inventory-service",
    http_port: 8083,
    owns: Some(Topic::Inventory),
    consumes: &[Topic::Order],
    database: "sagashop_inventory",
    group_id: "inventory-service",
    publishes_state: &[StateTopic::Products],
    replicates: &[],
};

pub const SHIPPING: Service = Service {
    name: "shipping",
    package: "shipping-service",
    http_port: 8084,
    owns: Some(Topic::Shipping),
    consumes: &[Topic::Payment, Topic::Order],
    database: "sagashop_shipping",
    group_id: "shipping-service",
    publishes_state: &[],
    replicates: &[],
};

/// The read side (CQRS): denormalized views built from every event topic; publishes nothing.
pub const QUERY: Service = Service {
    name: "query",
    package: "query-service",
    http_port: 8085,
    owns: None,
    consumes: &Topic::ALL,
    database: "sagashop_query",
    group_id: "query-service",
    publishes_state: &[],
    replicates: &[StateTopic::Products],
};

/// Every service, in the order tools list and start them.
pub const SERVICES: &[Service] = &[ORDER, PAYMENT, INVENTORY, SHIPPING, QUERY];

/// The service called `name` (`order`, ...).
pub fn by_name(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|service| service.name == name)
}

/// The service whose package (and binary) is `package` (`order-service`, ...).
pub fn by_package(package: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|service| service.package == package)
}

/// The service that publishes to `topic`.
pub fn owner_of(topic: Topic) -> &'static Service {
    SERVICES
        .iter()
        .find(|service| service.owns == Some(topic))
        .expect("every topic has an owner (tested)")
}

/// The services that read `topic`, in [`SERVICES`] order.
pub fn consumers_of(topic: Topic) -> impl Iterator<Item = &'static Service> {
    SERVICES.iter().filter(move |service| service.reads(topic))
}

/// The service that publishes the state topic `topic`.
pub fn publisher_of(topic: StateTopic) -> &'static Service {
    SERVICES
        .iter()
        .find(|service| service.publishes_state.contains(&topic))
        .expect("every state topic has a publisher (tested)")
}

/// The services that keep a replica of `topic`, in [`SERVICES`] order.
pub fn replicas_of(topic: StateTopic) -> impl Iterator<Item = &'static Service> {
    SERVICES
        .iter()
        .filter(move |service| service.replicates.contains(&topic))
}

/// The short names, in [`SERVICES`] order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().map(|service| service.name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use super::*;

    fn assert_unique<T: Ord + Debug>(what: &str, values: impl Iterator<Item = T>) {
        let mut seen = BTreeSet::new();
        for value in values {
            assert!(seen.insert(value), "two services share a {what}");
        }
    }

    #[test]
    fn names_ports_databases_groups_and_dead_letter_topics_are_unique() {
        assert_unique("name", names());
        assert_unique("package", SERVICES.iter().map(|s| s.package));
        assert_unique("port", SERVICES.iter().map(|s| s.http_port));
        assert_unique("database", SERVICES.iter().map(|s| s.database));
        assert_unique("group id", SERVICES.iter().map(|s| s.group_id));
        assert_unique(
            "dead-letter topic",
            SERVICES.iter().map(|s| s.dead_letter_topic("")),
        );
        assert!(SERVICES.iter().all(|s| s.http_port != 0));
    }

    #[test]
    fn each_topic_has_exactly_one_owner() {
        for topic in Topic::ALL {
            let owners: Vec<&str> = SERVICES
                .iter()
                .filter(|s| s.owns == Some(topic))
                .map(|s| s.name)
                .collect();
            assert_eq!(owners.len(), 1, "{topic:?} is owned by {owners:?}");
        }
    }

    /// A service that publishes nothing is there to read: it consumes at least one topic.
    #[test]
    fn a_service_that_owns_no_topic_reads_some() {
        for service in SERVICES.iter().filter(|s| s.owns.is_none()) {
            assert!(
                !service.consumes.is_empty(),
                "{} neither publishes nor reads",
                service.name
            );
        }
        assert!(QUERY.owns.is_none());
        for topic in Topic::ALL {
            assert!(QUERY.reads(topic), "query reads {topic:?}");
        }
    }

    #[test]
    fn every_topic_is_read_by_another_service_and_none_twice_by_one() {
        for service in SERVICES {
            assert_unique(
                &format!("topic consumed by {}", service.name),
                service.consumes.iter().map(|t| t.base_name()),
            );
        }
        for topic in Topic::ALL {
            assert!(
                consumers_of(topic).any(|s| s.owns != Some(topic)),
                "nobody but its owner reads {topic:?}"
            );
        }
    }

    /// `shared::service` derives the consumer group and the dead-letter topic from the short
    /// name, the compose stack keys databases and env variables by it: the declared values must
    /// follow the same rules.
    #[test]
    fn the_names_follow_the_conventions_the_plumbing_relies_on() {
        for service in SERVICES {
            let name = service.name;
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase()),
                "{name:?}: lower-case letters only (compose service, {name}_HTTP_PORT, database)"
            );
            assert_eq!(service.package, format!("{name}-service"));
            assert_eq!(service.group_id, format!("{name}-service"));
            assert_eq!(service.database, format!("sagashop_{name}"));
            assert_eq!(
                service.dead_letter_topic("p."),
                dead_letter_topic("p.", &format!("{name}-service"))
            );
        }
    }

    #[test]
    fn each_state_topic_has_one_publisher_that_does_not_replicate_it() {
        for topic in StateTopic::ALL {
            let publishers: Vec<&str> = SERVICES
                .iter()
                .filter(|s| s.publishes_state.contains(&topic))
                .map(|s| s.name)
                .collect();
            assert_eq!(
                publishers.len(),
                1,
                "{topic:?} is published by {publishers:?}"
            );
            assert!(!publisher_of(topic).replicates.contains(&topic));
            assert!(
                replicas_of(topic).next().is_some(),
                "nobody replicates {topic:?}"
            );
        }
        assert_eq!(publisher_of(StateTopic::Products).name, "inventory");
        let replicas: Vec<&str> = replicas_of(StateTopic::Products).map(|s| s.name).collect();
        assert_eq!(replicas, ["order", "query"]);
        let used: Vec<StateTopic> = ORDER.state_topics().collect();
        assert_eq!(used, [StateTopic::Products]);
        assert_eq!(PAYMENT.state_topics().count(), 0);
    }

    #[test]
    fn the_lookups_find_each_service() {
        for service in SERVICES {
            assert_eq!(by_name(service.name), Some(service));
            assert_eq!(by_package(service.package), Some(service));
            if let Some(topic) = service.owns {
                assert_eq!(owner_of(topic), service);
            }
        }
        assert_eq!(by_name("order-service"), None);
        assert_eq!(by_package("order"), None);
        let readers: Vec<&str> = consumers_of(Topic::Order).map(|s| s.name).collect();
        assert_eq!(readers, ["payment", "inventory", "shipping", "query"]);
        assert_eq!(ORDER.dead_letter_topic("e2e."), "e2e.order-service.dlq");
    }
}
