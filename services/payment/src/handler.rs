//! Applies saga events to payments: loads an order's payment and the account concerned (both
//! locked), lets [`decide`] charge, decline, refund or void, and stores the difference: the
//! payment, the entries appended to the account's ledger (with its snapshot) and the events
//! to publish, in one transaction.

use serde::de::DeserializeOwned;
use shared::events::{DeclineReason, Event, PaymentChargedV1, RefundFailed};
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::accounts::{self, WriteError};
use crate::domain::{decide, Decision, Emit, Payment, PaymentState, PaymentStatus, SagaEvent};
use crate::ledger::Head;
use crate::SERVICE;

pub struct PaymentEventHandler {
    /// The version of `payment.charged` written (see `Config::charged_version`).
    pub charged_version: u32,
}

impl EventHandler for PaymentEventHandler {
    type Input = SagaEvent;

    /// What this service acts on; every other event is named here too, so a new one does not
    /// compile until it is either handled or ignored on purpose.
    fn select(&self, event: Event) -> Option<SagaEvent> {
        Some(match event {
            Event::StockReserved(event) => SagaEvent::StockReserved(event),
            Event::OrderCancelled(event) => SagaEvent::OrderCancelled(event),
            Event::OrderConfirmed(event) => SagaEvent::OrderConfirmed(event),
            Event::OrderCreated(_)
            | Event::StockRejected(_)
            | Event::StockReleased(_)
            | Event::StockReleaseFailed(_)
            | Event::PaymentCharged(_)
            | Event::PaymentDeclined(_)
            | Event::PaymentRefunded(_)
            | Event::RefundFailed(_)
            | Event::ShipmentScheduled(_)
            | Event::ShipmentRejected(_)
            | Event::ShipmentCancelled(_) => return None,
        })
    }

    /// Locks the account of every order the batch's events concern, in customer order: the
    /// customers of new reservations and of the payments of decided orders.
    async fn lock_shared_rows(
        &self,
        conn: &mut PgConnection,
        events: &[&SagaEvent],
    ) -> Result<(), sqlx::Error> {
        let (mut customers, mut decided) = (Vec::new(), Vec::new());
        for event in events {
            match event {
                SagaEvent::StockReserved(reserved) => customers.push(reserved.customer_id.as_str()),
                SagaEvent::OrderCancelled(cancelled) => decided.push(cancelled.order_id),
                SagaEvent::OrderConfirmed(confirmed) => decided.push(confirmed.order_id),
                SagaEvent::HoldExpired { order_id } => decided.push(*order_id),
            }
        }
        lock_accounts(conn, &customers, &decided).await
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &SagaEvent,
    ) -> Result<(), HandlerError> {
        apply(
            conn,
            envelope.order_id,
            event,
            Some(envelope.id),
            self.charged_version,
        )
        .await
    }

    /// A refund that can never succeed: the payment ends `REFUND_FAILED` and the order service
    /// is told (`payment.refund_failed.v1`), so the order ends `FAILED`.
    async fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &SagaEvent,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        if !matches!(event, SagaEvent::OrderCancelled(_)) {
            return Ok(false);
        }
        refund_failed(conn, envelope.order_id, Some(envelope.id), reason).await
    }
}

/// Locks the accounts of `customers` and of the customers of the `decided` orders' payments,
/// in customer order: what a consumer batch ([`EventHandler::lock_shared_rows`]) and the hold
/// expiry worker lock before any payment, so that neither waits for the other while holding one.
pub(crate) async fn lock_accounts(
    conn: &mut PgConnection,
    customers: &[&str],
    decided: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "select 1 from accounts
         where customer_id = any($1::text[] || array(
             select customer_id from payments where order_id = any($2::uuid[])))
         order by customer_id for update",
    )
    .bind(customers)
    .bind(decided)
    .execute(conn)
    .await?;
    Ok(())
}

/// Loads and locks the order's payment, lets [`decide`] apply `event` and stores the result
/// with the ledger entries and the events to publish, in the caller's transaction: the
/// consumer's for an event, the hold expiry worker's for [`SagaEvent::HoldExpired`].
/// `causation_id`: the consumed event (`None` for the worker, whose entries get a new id).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    order_id: Uuid,
    event: &SagaEvent,
    causation_id: Option<Uuid>,
    charged_version: u32,
) -> Result<(), HandlerError> {
    let charged_customer = match &event {
        SagaEvent::StockReserved(reserved) => Some(reserved.customer_id.as_str()),
        SagaEvent::OrderCancelled(_)
        | SagaEvent::OrderConfirmed(_)
        | SagaEvent::HoldExpired { .. } => None,
    };
    let locked = lock_state(conn, order_id, charged_customer).await?;
    let (next, emit, postings) = match decide(&locked.state, event.clone()) {
        Decision::Apply { next, emit, ledger } => (next, emit, ledger),
        Decision::CannotApply(reason) => return Err(HandlerError::Failed(reason)),
    };
    if next == locked.state {
        tracing::debug!(%order_id, ?event, "nothing to do");
    }
    let before = locked.state.payment.as_ref();
    if let Some(after) = &next.payment {
        if after.hold_expired && !before.is_some_and(|payment| payment.hold_expired) {
            tracing::warn!(%order_id, "no decision within the hold timeout: the charge is refunded");
            metrics::counter!("sagashop_holds_expired_total", "service" => SERVICE).increment(1);
        }
        if after.hold_expired && after.confirmed && !before.is_some_and(|payment| payment.confirmed)
        {
            tracing::error!(%order_id, "order.confirmed after the charge's hold expired and was refunded: needs a person");
            metrics::counter!("sagashop_decisions_after_hold_expired_total", "service" => SERVICE)
                .increment(1);
        }
    }
    save(conn, order_id, &locked, &next).await?;
    if !postings.is_empty() {
        let (Some(customer_id), Some(head)) = (&locked.account_customer_id, locked.head) else {
            return Err(HandlerError::Failed(format!(
                "order {order_id}: money moves but no account is locked"
            )));
        };
        let entries = head
            .append(&postings)
            .map_err(|error| HandlerError::Failed(format!("order {order_id}: {error}")))?;
        debug_assert_eq!(Some(head.after(&entries).balance_cents), next.balance_cents);
        let cause = causation_id.unwrap_or_else(Uuid::now_v7);
        match accounts::append(conn, customer_id, head, &entries, cause).await {
            Ok(_) => {}
            // Retried (a bounded number of times) from the new head.
            Err(conflict @ WriteError::Conflict { .. }) => {
                return Err(HandlerError::Failed(conflict.to_string()))
            }
            Err(WriteError::Database(error)) => return Err(error.into()),
        }
    }
    for event in emit {
        match event {
            Emit::Charged(charged) if charged_version == 1 => {
                let charged = PaymentChargedV1::from(charged);
                outbox::emit(conn, SERVICE, order_id, causation_id, &charged).await?
            }
            Emit::Charged(charged) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &charged).await?
            }
            Emit::Declined(declined) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &declined).await?
            }
            Emit::Refunded(refunded) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &refunded).await?
            }
        };
    }
    Ok(())
}

/// A refund that can never succeed: the payment ends `REFUND_FAILED` (`reason` says why) and
/// the order service is told (`payment.refund_failed.v1`), so the order ends `FAILED`. `false`
/// when the order has no charge to refund.
pub(crate) async fn refund_failed(
    conn: &mut PgConnection,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let amount_cents: Option<i64> = sqlx::query_scalar(
        "update payments set status = 'REFUND_FAILED', reason = $2, updated_at = now()
         where order_id = $1 and status = 'CHARGED' returning amount_cents",
    )
    .bind(order_id)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(amount_cents) = amount_cents else {
        return Ok(false);
    };
    let failed = RefundFailed {
        order_id,
        amount_cents,
        error: reason.to_owned(),
    };
    outbox::emit(conn, SERVICE, order_id, causation_id, &failed).await?;
    metrics::counter!("sagashop_compensation_failures_total", "service" => SERVICE, "step" => "payment.refund")
        .increment(1);
    Ok(true)
}

/// The `reason` of a payment refunded because its hold expired.
pub(crate) const HOLD_EXPIRED: &str = "hold_expired";

/// The state [`decide`] needs, as loaded, and whose account it holds (with its ledger head).
struct Locked {
    state: PaymentState,
    account_customer_id: Option<String>,
    head: Option<Head>,
}

/// Loads and locks the order's payment and the account concerned: `charged_customer`'s, else
/// the payment's. One statement: a hot path.
async fn lock_state(
    conn: &mut PgConnection,
    order_id: Uuid,
    charged_customer: Option<&str>,
) -> Result<Locked, sqlx::Error> {
    type Row = (
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<bool>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let (status, customer_id, amount_cents, reason, confirmed, account_customer_id, balance_cents, version): Row =
        sqlx::query_as(
            "with payment as (
                 select status, customer_id, amount_cents, reason, confirmed_at is not null as confirmed
                 from payments
                 where order_id = $1 for update
             ), account as (
                 select customer_id, balance_cents, version from accounts
                 where customer_id = coalesce($2, (select customer_id from payment)) for update
             )
             select payment.status, payment.customer_id, payment.amount_cents, payment.reason,
                    payment.confirmed, account.customer_id, account.balance_cents, account.version
             from (select) as one left join payment on true left join account on true",
        )
        .bind(order_id)
        .bind(charged_customer)
        .fetch_one(&mut *conn)
        .await?;
    let payment = status
        .map(|status| -> Result<Payment, sqlx::Error> {
            let status = PaymentStatus::parse(&status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown payment status {status}").into())
            })?;
            let hold_expired = reason.as_deref() == Some(HOLD_EXPIRED);
            let decline_reason = reason
                .filter(|_| status == PaymentStatus::Declined)
                .map(parse_reason)
                .transpose()?;
            Ok(Payment {
                status,
                customer_id,
                amount_cents: amount_cents.unwrap_or_default(),
                decline_reason,
                confirmed: confirmed.unwrap_or_default(),
                hold_expired,
            })
        })
        .transpose()?;
    Ok(Locked {
        state: PaymentState {
            payment,
            balance_cents,
        },
        account_customer_id,
        head: version
            .zip(balance_cents)
            .map(|(version, balance_cents)| Head {
                version,
                balance_cents,
            }),
    })
}

/// Writes what changed from `locked` to `next` in the payment: a new one or a new status (the
/// balance moves with the ledger).
async fn save(
    conn: &mut PgConnection,
    order_id: Uuid,
    locked: &Locked,
    next: &PaymentState,
) -> Result<(), sqlx::Error> {
    match (&locked.state.payment, &next.payment) {
        (None, Some(payment)) => {
            // The trace it is made in, for the hold expiry worker to continue.
            let trace = shared::traces::current_context();
            sqlx::query(
                "insert into payments
                     (order_id, customer_id, amount_cents, status, reason, traceparent, tracestate)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(order_id)
            .bind(&payment.customer_id)
            .bind(payment.amount_cents)
            .bind(payment.status.as_str())
            .bind(payment.decline_reason.map(DeclineReason::as_str))
            .bind(trace.as_ref().map(|trace| trace.traceparent.as_str()))
            .bind(trace.as_ref().and_then(|trace| trace.tracestate.as_deref()))
            .execute(&mut *conn)
            .await?;
        }
        // The rules change nothing of a recorded payment but its status, whether it is
        // confirmed and whether its hold expired.
        (Some(before), Some(after)) if before != after => {
            sqlx::query(
                "update payments set status = $2,
                        confirmed_at = case when $3 then coalesce(confirmed_at, now()) end,
                        reason = case when $4 then $5 else reason end,
                        updated_at = now()
                 where order_id = $1",
            )
            .bind(order_id)
            .bind(after.status.as_str())
            .bind(after.confirmed)
            .bind(after.hold_expired)
            .bind(HOLD_EXPIRED)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

fn parse_reason<R: DeserializeOwned>(text: String) -> Result<R, sqlx::Error> {
    serde_json::from_value(serde_json::Value::String(text))
        .map_err(|error| sqlx::Error::Decode(error.into()))
}
