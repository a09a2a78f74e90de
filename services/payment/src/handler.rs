//! Applies saga events to accounts: charge on `inventory.reserved`, refund on `order.cancelled`.

use shared::events::{
    Event, PaymentCharged, PaymentChargedV1, PaymentDeclined, PaymentMethod, PaymentRefunded,
    RefundFailed, StockReserved,
};
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::PgConnection;

use crate::domain::{self, decide, Action, PaymentStatus, SagaEvent};
use crate::SERVICE;

pub struct PaymentEventHandler {
    /// The version of `payment.charged` written (see `Config::charged_version`).
    pub charged_version: u32,
}

impl EventHandler for PaymentEventHandler {
    type Input = Event;

    fn select(&self, event: Event) -> Option<Event> {
        match event {
            Event::StockReserved(_) | Event::OrderCancelled(_) => Some(event),
            Event::OrderCreated(_)
            | Event::OrderConfirmed(_)
            | Event::StockRejected(_)
            | Event::StockReleased(_)
            | Event::StockReleaseFailed(_)
            | Event::PaymentCharged(_)
            | Event::PaymentDeclined(_)
            | Event::PaymentRefunded(_)
            | Event::RefundFailed(_)
            | Event::ShipmentScheduled(_)
            | Event::ShipmentRejected(_)
            | Event::ShipmentCancelled(_) => None,
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Event,
    ) -> Result<(), HandlerError> {
        let order_id = envelope.order_id;
        let event = match input {
            Event::StockReserved(_) => SagaEvent::StockReserved,
            Event::OrderCancelled(_) => SagaEvent::OrderCancelled,
            _ => return Ok(()),
        };
        let payment: Option<(String, Option<String>, i64)> = sqlx::query_as(
            "select status, customer_id, amount_cents from payments where order_id = $1 for update",
        )
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await?;
        let status = payment
            .as_ref()
            .map(|(status, _, _)| {
                PaymentStatus::parse(status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown payment status {status}").into())
                })
            })
            .transpose()?;
        match decide(status, event) {
            Action::Charge => {
                let Event::StockReserved(reserved) = input else {
                    return Ok(());
                };
                let balance: Option<i64> = sqlx::query_scalar(
                    "select balance_cents from accounts where customer_id = $1 for update",
                )
                .bind(&reserved.customer_id)
                .fetch_optional(&mut *conn)
                .await?;
                match domain::charge(balance, reserved.total_cents) {
                    Ok(new_balance) => {
                        set_balance(conn, &reserved.customer_id, new_balance).await?;
                        insert_payment(conn, reserved, PaymentStatus::Charged, None).await?;
                        let charged = PaymentCharged {
                            order_id,
                            customer_id: reserved.customer_id.clone(),
                            amount_cents: reserved.total_cents,
                            shipping_address: reserved.shipping_address.clone(),
                            payment_method: PaymentMethod::AccountBalance,
                        };
                        let causation = Some(envelope.id);
                        if self.charged_version == 1 {
                            let charged = PaymentChargedV1::from(charged);
                            outbox::emit(conn, SERVICE, order_id, causation, &charged).await?;
                        } else {
                            outbox::emit(conn, SERVICE, order_id, causation, &charged).await?;
                        }
                    }
                    Err(reason) => {
                        insert_payment(
                            conn,
                            reserved,
                            PaymentStatus::Declined,
                            Some(reason.as_str()),
                        )
                        .await?;
                        outbox::emit(
                            conn,
                            SERVICE,
                            order_id,
                            Some(envelope.id),
                            &PaymentDeclined { order_id, reason },
                        )
                        .await?;
                    }
                }
            }
            Action::Refund => {
                let (_, customer_id, amount_cents) = payment.unwrap_or_default();
                let refunded = sqlx::query(
                    "update accounts set balance_cents = balance_cents + $2, updated_at = now() where customer_id = $1",
                )
                .bind(&customer_id)
                .bind(amount_cents)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if refunded == 0 {
                    return Err(HandlerError::Failed(format!(
                        "the account of customer {} is gone: {amount_cents} cents cannot be refunded",
                        customer_id.unwrap_or_default()
                    )));
                }
                sqlx::query("update payments set status = 'REFUNDED', updated_at = now() where order_id = $1")
                    .bind(order_id)
                    .execute(&mut *conn)
                    .await?;
                outbox::emit(
                    conn,
                    SERVICE,
                    order_id,
                    Some(envelope.id),
                    &PaymentRefunded {
                        order_id,
                        amount_cents,
                    },
                )
                .await?;
            }
            Action::Void => {
                sqlx::query("insert into payments (order_id, status) values ($1, 'VOIDED')")
                    .bind(order_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Action::Nothing => {
                tracing::debug!(%order_id, event_type = %envelope.event_type, "nothing to do")
            }
        }
        Ok(())
    }

    /// A refund that can never succeed: the payment ends `REFUND_FAILED` and the order service
    /// is told (`payment.refund_failed.v1`), so the order ends `FAILED`.
    async fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Event,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        if !matches!(input, Event::OrderCancelled(_)) {
            return Ok(false);
        }
        let order_id = envelope.order_id;
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
        outbox::emit(conn, SERVICE, order_id, Some(envelope.id), &failed).await?;
        metrics::counter!("sagashop_compensation_failures_total", "service" => SERVICE, "step" => "payment.refund")
            .increment(1);
        Ok(true)
    }
}

async fn set_balance(
    conn: &mut PgConnection,
    customer_id: &str,
    balance_cents: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update accounts set balance_cents = $2, updated_at = now() where customer_id = $1",
    )
    .bind(customer_id)
    .bind(balance_cents)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_payment(
    conn: &mut PgConnection,
    reserved: &StockReserved,
    status: PaymentStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into payments (order_id, customer_id, amount_cents, status, reason) values ($1, $2, $3, $4, $5)",
    )
    .bind(reserved.order_id)
    .bind(&reserved.customer_id)
    .bind(reserved.total_cents)
    .bind(status.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
