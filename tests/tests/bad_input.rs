//! Bad input on every endpoint of the running system gets its 4xx with the JSON error shape,
//! never a 500, and changes nothing.

use e2e::{unique, Api};
use serde_json::{json, Value};

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    url: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn json_case(
    what: &'static str,
    method: &'static str,
    url: String,
    body: Value,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        url,
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        status,
        code,
    }
}

/// The body-level mistakes every JSON endpoint must reject, given a valid body for it.
fn body_cases(url: &str, valid: &Value) -> Vec<Case> {
    let first_field = valid.as_object().unwrap().keys().next().unwrap().clone();
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove(&first_field);
    let mut unknown = valid.clone();
    unknown["surprise"] = json!(1);
    let mut wrong_type = valid.clone();
    wrong_type[&first_field] = json!([1, 2]);
    vec![
        Case {
            what: "malformed JSON",
            method: "POST",
            url: url.to_owned(),
            content_type: Some("application/json"),
            body: b"{\"oops\":".to_vec(),
            status: 400,
            code: "malformed_json",
        },
        Case {
            what: "wrong content type",
            method: "POST",
            url: url.to_owned(),
            content_type: Some("text/plain"),
            body: valid.to_string().into_bytes(),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            what: "no content type",
            method: "POST",
            url: url.to_owned(),
            content_type: None,
            body: valid.to_string().into_bytes(),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            what: "oversized body",
            method: "POST",
            url: url.to_owned(),
            content_type: Some("application/json"),
            body: format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes(),
            status: 413,
            code: "payload_too_large",
        },
        json_case(
            "unknown field",
            "POST",
            url.to_owned(),
            unknown,
            422,
            "validation_failed",
        ),
        json_case(
            "missing field",
            "POST",
            url.to_owned(),
            missing,
            422,
            "validation_failed",
        ),
        json_case(
            "wrong type",
            "POST",
            url.to_owned(),
            wrong_type,
            422,
            "validation_failed",
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_answers_bad_input_with_its_4xx_and_a_json_error() {
    let api = Api::new();
    let system = api.system;
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 100, 5).await;
    api.open_account(&customer, 1_000).await;
    let long = "x".repeat(65);
    let (inventory, payment, order, shipping) = (
        &system.inventory_url,
        &system.payment_url,
        &system.order_url,
        &system.shipping_url,
    );

    let product = json!({"sku": unique("new"), "name": "Tea", "price_cents": 100, "stock": 1});
    let account = json!({"customer_id": unique("new"), "balance_cents": 100});
    let restock = json!({"quantity": 2});
    let place = json!({"customer_id": customer, "items": [{"sku": sku, "quantity": 1}], "shipping_address": {"country": "FR"}});
    let products_url = format!("{inventory}/products");
    let restock_url = format!("{inventory}/products/{sku}/restock");
    let accounts_url = format!("{payment}/accounts");
    let orders_url = format!("{order}/orders");

    let mut cases = Vec::new();
    for (url, valid) in [
        (&products_url, &product),
        (&restock_url, &restock),
        (&accounts_url, &account),
        (&orders_url, &place),
    ] {
        cases.extend(body_cases(url, valid));
    }
    let unknown_order = uuid::Uuid::now_v7();
    let with = |base: &Value, pointer: &str, value: Value| {
        let mut body = base.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let invalid = |what, url: &String, body| {
        json_case(what, "POST", url.clone(), body, 422, "validation_failed")
    };
    cases.extend([
        invalid(
            "negative price",
            &products_url,
            with(&product, "/price_cents", json!(-1)),
        ),
        invalid(
            "negative stock",
            &products_url,
            with(&product, "/stock", json!(-5)),
        ),
        invalid(
            "over-long sku",
            &products_url,
            with(&product, "/sku", json!(long)),
        ),
        invalid(
            "sku with a slash",
            &products_url,
            with(&product, "/sku", json!("a/b")),
        ),
        invalid(
            "over-long name",
            &products_url,
            with(&product, "/name", json!("n".repeat(201))),
        ),
        invalid(
            "empty name",
            &products_url,
            with(&product, "/name", json!("")),
        ),
        json_case(
            "existing sku",
            "POST",
            products_url.clone(),
            with(&product, "/sku", json!(sku)),
            409,
            "product_exists",
        ),
        invalid("restock of zero", &restock_url, json!({"quantity": 0})),
        invalid("negative restock", &restock_url, json!({"quantity": -3})),
        json_case(
            "restock of an unknown sku",
            "POST",
            format!("{inventory}/products/nope-{long}/restock"),
            restock.clone(),
            404,
            "product_not_found",
        ),
        invalid(
            "negative balance",
            &accounts_url,
            with(&account, "/balance_cents", json!(-100)),
        ),
        invalid(
            "over-long customer id",
            &accounts_url,
            with(&account, "/customer_id", json!(long)),
        ),
        json_case(
            "existing account",
            "POST",
            accounts_url.clone(),
            with(&account, "/customer_id", json!(customer)),
            409,
            "account_exists",
        ),
        invalid(
            "quantity zero",
            &orders_url,
            with(&place, "/items/0/quantity", json!(0)),
        ),
        invalid(
            "negative quantity",
            &orders_url,
            with(&place, "/items/0/quantity", json!(-1)),
        ),
        invalid(
            "huge quantity",
            &orders_url,
            with(&place, "/items/0/quantity", json!(10_000_000_000_i64)),
        ),
        invalid("no items", &orders_url, with(&place, "/items", json!([]))),
        invalid(
            "over-long customer id",
            &orders_url,
            with(&place, "/customer_id", json!(long)),
        ),
        invalid(
            "over-long sku",
            &orders_url,
            with(&place, "/items/0/sku", json!(long)),
        ),
        invalid(
            "lower-case country",
            &orders_url,
            with(&place, "/shipping_address/country", json!("fr")),
        ),
        invalid(
            "country name",
            &orders_url,
            with(&place, "/shipping_address/country", json!("France")),
        ),
        invalid(
            "unknown address field",
            &orders_url,
            with(
                &place,
                "/shipping_address",
                json!({"country": "FR", "planet": "Mars"}),
            ),
        ),
        invalid(
            "duplicate sku lines",
            &orders_url,
            with(
                &place,
                "/items",
                json!([{"sku": sku, "quantity": 1}, {"sku": sku, "quantity": 2}]),
            ),
        ),
        json_case(
            "cancel of an unknown order",
            "POST",
            format!("{order}/orders/{unknown_order}/cancel"),
            json!({}),
            404,
            "order_not_found",
        ),
    ]);
    let get = |what, url: String, status, code| Case {
        what,
        method: "GET",
        url,
        content_type: None,
        body: Vec::new(),
        status,
        code,
    };
    cases.extend([
        get(
            "unknown product",
            format!("{inventory}/products/{}", unique("none")),
            404,
            "product_not_found",
        ),
        get(
            "bad product page size",
            format!("{inventory}/products?limit=0"),
            400,
            "invalid_query",
        ),
        get(
            "unknown account",
            format!("{payment}/accounts/{}", unique("none")),
            404,
            "account_not_found",
        ),
        get(
            "unknown payment",
            format!("{payment}/payments/{unknown_order}"),
            404,
            "payment_not_found",
        ),
        get(
            "payment id not a UUID",
            format!("{payment}/payments/not-a-uuid"),
            400,
            "invalid_path",
        ),
        get(
            "unknown shipment",
            format!("{shipping}/shipments/{unknown_order}"),
            404,
            "shipment_not_found",
        ),
        get(
            "shipment id not a UUID",
            format!("{shipping}/shipments/42"),
            400,
            "invalid_path",
        ),
        get(
            "unknown order",
            format!("{order}/orders/{unknown_order}"),
            404,
            "order_not_found",
        ),
        get(
            "order id not a UUID",
            format!("{order}/orders/abc"),
            400,
            "invalid_path",
        ),
        get(
            "timeline of an unknown order",
            format!("{order}/orders/{unknown_order}/timeline"),
            404,
            "order_not_found",
        ),
        get(
            "bad status filter",
            format!("{order}/orders?status=LOST"),
            400,
            "invalid_query",
        ),
        get(
            "bad page size",
            format!("{order}/orders?limit=1000"),
            400,
            "invalid_query",
        ),
        get(
            "bad cursor",
            format!("{order}/orders?cursor=xyz"),
            400,
            "invalid_query",
        ),
        get(
            "unknown query parameter",
            format!("{order}/orders?colour=red"),
            400,
            "invalid_query",
        ),
        get(
            "unknown route",
            format!("{order}/nothing-here"),
            404,
            "not_found",
        ),
        get(
            "wrong method",
            format!("{payment}/payments"),
            404,
            "not_found",
        ),
        Case {
            what: "wrong method",
            method: "DELETE",
            url: format!("{inventory}/products"),
            content_type: None,
            body: Vec::new(),
            status: 405,
            code: "method_not_allowed",
        },
    ]);
    let reused_key = unique("key");
    let idempotent = |body: &Value| {
        api.http
            .post(&orders_url)
            .header("Idempotency-Key", &reused_key)
            .json(body)
    };
    assert_eq!(api.send(idempotent(&place)).await.0, 202);

    let mut failures = Vec::new();
    for case in &cases {
        let mut request = api
            .http
            .request(case.method.parse().unwrap(), &case.url)
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let (status, reply) = api.send(request).await;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        if status != case.status || reply["error"]["code"] != case.code || message.is_empty() {
            failures.push(format!(
                "{} {} ({}): got {status} {reply}, want {} {}",
                case.method, case.url, case.what, case.status, case.code
            ));
        }
    }
    let (status, reply) = api
        .send(idempotent(&with(&place, "/items/0/quantity", json!(2))))
        .await;
    if (status, &reply["error"]["code"]) != (422, &json!("idempotency_key_reused")) {
        failures.push(format!(
            "reused Idempotency-Key with another body: got {status} {reply}"
        ));
    }
    let (status, reply) = api
        .send(
            api.http
                .post(&orders_url)
                .header("Idempotency-Key", "")
                .json(&place),
        )
        .await;
    if (status, &reply["error"]["code"]) != (400, &json!("invalid_idempotency_key")) {
        failures.push(format!("empty Idempotency-Key: got {status} {reply}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + 2,
        failures.join("\n")
    );

    // Nothing the bad requests said changed anything.
    let product_now = api.product(&sku).await;
    let units: i64 = ["available", "reserved", "sold"]
        .iter()
        .map(|field| product_now[field].as_i64().unwrap())
        .sum();
    assert_eq!(units, 5);
    assert_eq!(
        api.get(format!(
            "{inventory}/products/{}",
            product["sku"].as_str().unwrap()
        ))
        .await
        .0,
        404
    );
    assert_eq!(
        api.get(format!(
            "{payment}/accounts/{}",
            account["customer_id"].as_str().unwrap()
        ))
        .await
        .0,
        404
    );
    let (_, page) = api
        .get(format!("{order}/orders?customer_id={customer}"))
        .await;
    assert_eq!(
        page["orders"].as_array().map(Vec::len),
        Some(1),
        "only the one good order exists: {page}"
    );
}

#[tokio::test]
async fn every_service_is_live_and_ready() {
    let api = Api::new();
    let system = api.system;
    for url in [
        &system.order_url,
        &system.payment_url,
        &system.inventory_url,
        &system.shipping_url,
    ] {
        let (status, live) = api.get(format!("{url}/health/live")).await;
        assert_eq!(status, 200, "{live}");
        let (status, ready) = api.get(format!("{url}/health/ready")).await;
        assert_eq!(
            (status, &ready["checks"]),
            (
                200,
                &json!({
                    "database": "ok", "kafka": "ok", "tasks": "ok", "consumer": "ok", "relay": "ok"
                })
            ),
            "{ready}"
        );
    }
}
