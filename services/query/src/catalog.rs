//! The query service's replica of inventory's products (`catalog`, fed from the compacted
//! topic `inventory.products` by `shared::replica` into `shared::state::ProductCatalog`), and
//! `GET /catalog`: every product with its
//! live availability, as inventory last published it. Order views take their lines' product
//! names from the same table.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::http::{self, ApiError, ValidQuery};
use shared::replica::Replica;
use shared::state::ProductState;
use sqlx::PgPool;

const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 500;
const MAX_SKU_CHARS: usize = 64;

/// `GET /catalog`, reading the replica's table; `replica` (absent in tests without a broker)
/// says how current it is.
pub fn router(pool: PgPool, replica: Option<Replica>) -> Router {
    Router::new()
        .route("/catalog", get(list))
        .with_state(CatalogState { pool, replica })
}

#[derive(Clone)]
struct CatalogState {
    pool: PgPool,
    replica: Option<Replica>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    /// The last sku of the previous page.
    cursor: Option<String>,
}

/// What the page reflects: whether the replica had reached the topic's high watermarks at its
/// last refresh, and the next offset it applied per partition.
#[derive(Debug, Serialize)]
struct ReplicaStatus {
    current: bool,
    offsets: BTreeMap<i32, i64>,
}

#[derive(Serialize)]
struct Page {
    products: Vec<ProductState>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
    replica: ReplicaStatus,
}

async fn list(
    State(state): State<CatalogState>,
    ValidQuery(query): ValidQuery<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = http::page_limit(query.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    if let Some(cursor) = &query.cursor {
        let chars = cursor.chars().count();
        if chars == 0 || chars > MAX_SKU_CHARS {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("cursor must be a sku of 1 to {MAX_SKU_CHARS} characters"),
            ));
        }
    }
    // Offsets first: the rows read after them are at least as new.
    let replica = match &state.replica {
        Some(replica) => ReplicaStatus {
            current: replica.is_current(),
            offsets: replica.stored_offsets(),
        },
        None => ReplicaStatus {
            current: false,
            offsets: BTreeMap::new(),
        },
    };
    let mut products: Vec<ProductState> = sqlx::query_as(
        "select sku, name, price_cents, available, reserved, sold, version, updated_at
         from catalog where $1::text is null or sku > $1 order by sku limit $2",
    )
    .bind(&query.cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = if products.len() as i64 > limit {
        products.truncate(limit as usize);
        products.last().map(|product| product.sku.clone())
    } else {
        None
    };
    Ok(Json(Page {
        products,
        next_cursor,
        replica,
    }))
}
