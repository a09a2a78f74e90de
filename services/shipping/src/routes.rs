//! The shipping API: read an order's shipment and the served countries.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use shared::http::{ApiError, ValidPath};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Countries;

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    countries: Countries,
}

pub fn router(pool: PgPool, countries: Countries) -> Router {
    Router::new()
        .route("/shipments/{order_id}", get(get_shipment))
        .route("/countries", get(list_countries))
        .with_state(AppState { pool, countries })
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Shipment {
    order_id: Uuid,
    status: String,
    country: Option<String>,
}

async fn get_shipment(
    State(state): State<AppState>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Json<Shipment>, ApiError> {
    sqlx::query_as("select order_id, status, country from shipments where order_id = $1 and status <> 'VOIDED'")
        .bind(order_id)
        .fetch_optional(&state.pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("shipment_not_found", format!("no shipment for order {order_id}")))
}

async fn list_countries(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "countries": state.countries.iter().collect::<Vec<_>>() }))
}
