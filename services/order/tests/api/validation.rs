//! Invalid order bodies and characters are client errors that create nothing.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{assert_error, assert_rejected, bad_bodies, invalid, patched};

use crate::helpers::{order_body, place, start};

#[tokio::test]
async fn invalid_order_bodies_are_rejected_and_create_nothing() {
    let app = start().await;
    let valid = order_body("carol");
    let field = |pointer, value| patched(&valid, pointer, value);
    let fifty_one: Vec<Value> = (0..51)
        .map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1}))
        .collect();
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("customer_id missing", field("/customer_id", None)),
        invalid(
            "customer_id a number",
            field("/customer_id", Some(json!(7))),
        ),
        invalid("customer_id empty", field("/customer_id", Some(json!("")))),
        invalid(
            "customer_id blank",
            field("/customer_id", Some(json!(" \t "))),
        ),
        invalid(
            "customer_id 65 characters",
            field("/customer_id", Some(json!("c".repeat(65)))),
        ),
        invalid("items missing", field("/items", None)),
        invalid("items null", field("/items", Some(Value::Null))),
        invalid(
            "items an object",
            field("/items", Some(json!({"sku": "A", "quantity": 1}))),
        ),
        invalid("no items", field("/items", Some(json!([])))),
        invalid("51 items", field("/items", Some(Value::Array(fifty_one)))),
        invalid("quantity missing", field("/items/0/quantity", None)),
        invalid("quantity zero", field("/items/0/quantity", Some(json!(0)))),
        invalid(
            "quantity negative",
            field("/items/0/quantity", Some(json!(-1))),
        ),
        invalid(
            "quantity over 1000",
            field("/items/0/quantity", Some(json!(1_001))),
        ),
        invalid(
            "quantity a string",
            field("/items/0/quantity", Some(json!("2"))),
        ),
        invalid(
            "quantity fractional",
            field("/items/0/quantity", Some(json!(1.5))),
        ),
        invalid(
            "quantity beyond i32",
            field("/items/0/quantity", Some(json!(2_147_483_648_i64))),
        ),
        invalid("sku missing", field("/items/0/sku", None)),
        invalid("sku empty", field("/items/0/sku", Some(json!("")))),
        invalid(
            "sku 65 characters",
            field("/items/0/sku", Some(json!("s".repeat(65)))),
        ),
        invalid(
            "unknown item field",
            field("/items/0/price_cents", Some(json!(1))),
        ),
        invalid("sku twice", field("/items/1/sku", Some(json!("MUG-01")))),
        invalid("address missing", field("/shipping_address", None)),
        invalid(
            "address a string",
            field("/shipping_address", Some(json!("1 rue de Rivoli, Paris"))),
        ),
        invalid("country missing", field("/shipping_address/country", None)),
        invalid(
            "country lower case",
            field("/shipping_address/country", Some(json!("fr"))),
        ),
        invalid(
            "country three letters",
            field("/shipping_address/country", Some(json!("FRA"))),
        ),
        invalid(
            "country one letter",
            field("/shipping_address/country", Some(json!("F"))),
        ),
        invalid(
            "country empty",
            field("/shipping_address/country", Some(json!(""))),
        ),
        invalid(
            "country not ASCII",
            field("/shipping_address/country", Some(json!("É"))),
        ),
        invalid(
            "country a number",
            field("/shipping_address/country", Some(json!(33))),
        ),
        invalid(
            "unknown address field",
            field("/shipping_address/phone", Some(json!("+33 1 23"))),
        ),
        invalid(
            "name 201 characters",
            field("/shipping_address/name", Some(json!("n".repeat(201)))),
        ),
        invalid(
            "line1 blank",
            field("/shipping_address/line1", Some(json!("   "))),
        ),
        invalid(
            "postal_code a number",
            field("/shipping_address/postal_code", Some(json!(75001))),
        ),
    ]);
    assert_rejected(&app, Method::POST, "/orders", cases).await;
    assert_eq!(app.count("select count(*) from orders").await, 0);
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

#[tokio::test]
async fn a_nul_anywhere_in_an_order_is_a_client_error() {
    let app = start().await;
    let reply = app
        .send(Method::GET, "/orders?customer_id=a%00b", None)
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_characters");
    let valid = order_body("nul");
    for pointer in ["/customer_id", "/items/0/sku", "/shipping_address/city"] {
        let reply = place(
            &app,
            &patched(&valid, pointer, Some(json!("a\u{0}b"))),
            None,
        )
        .await;
        assert_error(
            &(reply.status, reply.body),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
}
