//! Inventory's saga rules as pure functions: pricing and reserving an order's lines, and what
//! each saga event does to a reservation. No I/O here.

use std::collections::HashMap;

use shared::events::{OrderLine, PricedLine, StockRejection};

/// A product's price and stock as the reservation sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub price_cents: i64,
    pub available: i32,
}

/// Why an order cannot be reserved, and the first line that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: StockRejection,
    pub sku: String,
}

/// Prices every line at the current price, or rejects the whole order: all lines or none.
pub fn reserve(
    lines: &[OrderLine],
    stock: &HashMap<String, Stock>,
) -> Result<(Vec<PricedLine>, i64), Rejection> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: i64 = 0;
    for line in merge_lines(lines) {
        let Some(product) = stock.get(&line.sku) else {
            return Err(Rejection {
                reason: StockRejection::UnknownProduct,
                sku: line.sku,
            });
        };
        if line.quantity < 1 || product.available < line.quantity {
            return Err(Rejection {
                reason: StockRejection::OutOfStock,
                sku: line.sku,
            });
        }
        total += product.price_cents * i64::from(line.quantity);
        priced.push(PricedLine {
            sku: line.sku,
            quantity: line.quantity,
            unit_price_cents: product.price_cents,
        });
    }
    Ok((priced, total))
}

/// One line per sku, sorted by sku (the order rows are locked in).
pub fn merge_lines(lines: &[OrderLine]) -> Vec<OrderLine> {
    let mut merged: Vec<OrderLine> = Vec::new();
    let mut sorted = lines.to_vec();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    for line in sorted {
        match merged.last_mut() {
            Some(last) if last.sku == line.sku => {
                last.quantity = last.quantity.saturating_add(line.quantity)
            }
            _ => merged.push(line),
        }
    }
    merged
}

/// Where an order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Reserved,
    Released,
    /// The release could never be made (e.g. the product is gone): needs a person.
    ReleaseFailed,
    Committed,
    Rejected,
    /// The order was cancelled before inventory saw it: nothing may be reserved for it later.
    Voided,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Released => "RELEASED",
            Self::ReleaseFailed => "RELEASE_FAILED",
            Self::Committed => "COMMITTED",
            Self::Rejected => "REJECTED",
            Self::Voided => "VOIDED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Reserved,
            Self::Released,
            Self::ReleaseFailed,
            Self::Committed,
            Self::Rejected,
            Self::Voided,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// The saga events inventory reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaEvent {
    OrderCreated,
    OrderCancelled,
    OrderConfirmed,
}

/// What to do with the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try to reserve; the outcome is `Reserved` or `Rejected`.
    Reserve,
    /// Compensate: reserved units go back to available.
    Release,
    /// Reserved units are sold.
    Commit,
    /// Remember the cancellation so a late `order.created` reserves nothing.
    Void,
    Nothing,
}

/// Decides what `event` does to a reservation in `status` (`None`: never seen).
pub fn decide(status: Option<ReservationStatus>, event: SagaEvent) -> Action {
    use ReservationStatus::*;
    match (status, event) {
        (None, SagaEvent::OrderCreated) => Action::Reserve,
        (None, SagaEvent::OrderCancelled) => Action::Void,
        (Some(Reserved), SagaEvent::OrderCancelled) => Action::Release,
        (Some(Reserved), SagaEvent::OrderConfirmed) => Action::Commit,
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(sku: &str, quantity: i32) -> OrderLine {
        OrderLine {
            sku: sku.to_owned(),
            quantity,
        }
    }

    fn stock() -> HashMap<String, Stock> {
        HashMap::from([
            (
                "A".to_owned(),
                Stock {
                    price_cents: 250,
                    available: 5,
                },
            ),
            (
                "B".to_owned(),
                Stock {
                    price_cents: 1_000,
                    available: 1,
                },
            ),
        ])
    }

    #[test]
    fn prices_every_line_at_the_current_price() {
        let (priced, total) = reserve(&[line("B", 1), line("A", 2)], &stock()).unwrap();
        assert_eq!(total, 1_500);
        assert_eq!(
            priced.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
    }

    #[test]
    fn rejects_the_whole_order_when_one_line_fails() {
        let rejection = reserve(&[line("A", 1), line("B", 2)], &stock()).unwrap_err();
        assert_eq!(
            rejection,
            Rejection {
                reason: StockRejection::OutOfStock,
                sku: "B".into()
            }
        );
        let rejection = reserve(&[line("A", 1), line("Z", 1)], &stock()).unwrap_err();
        assert_eq!(rejection.reason, StockRejection::UnknownProduct);
    }

    #[test]
    fn repeated_skus_are_reserved_together() {
        let rejection = reserve(&[line("A", 3), line("A", 3)], &stock()).unwrap_err();
        assert_eq!(rejection.reason, StockRejection::OutOfStock);
    }

    /// A model of one product and one order's reservation of `quantity` units.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Model {
        status: Option<ReservationStatus>,
        available: i32,
        reserved: i32,
        sold: i32,
    }

    fn apply(mut model: Model, event: SagaEvent, quantity: i32) -> Model {
        match decide(model.status, event) {
            Action::Reserve if model.available >= quantity => {
                model.available -= quantity;
                model.reserved += quantity;
                model.status = Some(ReservationStatus::Reserved);
            }
            Action::Reserve => model.status = Some(ReservationStatus::Rejected),
            Action::Release => {
                model.available += quantity;
                model.reserved -= quantity;
                model.status = Some(ReservationStatus::Released);
            }
            Action::Commit => {
                model.reserved -= quantity;
                model.sold += quantity;
                model.status = Some(ReservationStatus::Committed);
            }
            Action::Void => model.status = Some(ReservationStatus::Voided),
            Action::Nothing => {}
        }
        model
    }

    fn any_event() -> impl Strategy<Value = SagaEvent> {
        prop_oneof![
            Just(SagaEvent::OrderCreated),
            Just(SagaEvent::OrderCancelled),
            Just(SagaEvent::OrderConfirmed)
        ]
    }

    proptest! {
        #[test]
        fn duplicates_change_nothing_and_stock_is_conserved(
            events in proptest::collection::vec(any_event(), 0..6),
            duplicated in proptest::collection::vec(any::<bool>(), 6),
            initial in 0i32..10,
            quantity in 1i32..5,
        ) {
            let start = Model { status: None, available: initial, reserved: 0, sold: 0 };
            let once = events.iter().fold(start.clone(), |m, e| apply(m, *e, quantity));
            let twice = events.iter().zip(duplicated.iter()).fold(start, |m, (e, dup)| {
                let m = apply(m, *e, quantity);
                if *dup { apply(m, *e, quantity) } else { m }
            });
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(once.available + once.reserved + once.sold, initial);
            prop_assert!(once.available >= 0 && once.reserved >= 0 && once.sold >= 0);
        }
    }
}
