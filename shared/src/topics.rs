//! The topics of the saga: each service owns the one it publishes to.

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
