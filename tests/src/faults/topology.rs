//! The services, the saga topics and who consumes what, as the fault harness knows them:
//! listed here by hand, once (every other module of the harness reads this one), until
//! `shared::topology` declares them for the whole workspace and this module derives from it.

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Svc {
    Order,
    Payment,
    Inventory,
    Shipping,
}

impl Svc {
    pub const ALL: [Svc; 4] = [Svc::Order, Svc::Payment, Svc::Inventory, Svc::Shipping];

    /// Short name: `order`, `payment`, ...
    pub fn name(self) -> &'static str {
        match self {
            Svc::Order => "order",
            Svc::Payment => "payment",
            Svc::Inventory => "inventory",
            Svc::Shipping => "shipping",
        }
    }

    /// Package and binary name, e.g. `order-service`.
    pub fn binary(self) -> &'static str {
        match self {
            Svc::Order => "order-service",
            Svc::Payment => "payment-service",
            Svc::Inventory => "inventory-service",
            Svc::Shipping => "shipping-service",
        }
    }

    /// The saga topics (base names) it consumes, as its `startup.rs` subscribes.
    pub fn consumes(self) -> &'static [&'static str] {
        match self {
            Svc::Order => &["inventory.events", "payment.events", "shipping.events"],
            Svc::Payment => &["inventory.events", "order.events"],
            Svc::Inventory => &["order.events"],
            Svc::Shipping => &["payment.events", "order.events"],
        }
    }

    /// Its consumer group under a topic prefix (its `KAFKA_GROUP_ID`).
    pub fn group(self, prefix: &str) -> String {
        format!("{prefix}{}-service", self.name())
    }

    /// The consumers of a saga topic (base name).
    pub fn consumers_of(topic: &str) -> Vec<Svc> {
        Svc::ALL
            .into_iter()
            .filter(|svc| svc.consumes().contains(&topic))
            .collect()
    }
}

/// The four saga topics, base names.
pub const TOPICS: [&str; 4] = [
    "order.events",
    "inventory.events",
    "payment.events",
    "shipping.events",
];
