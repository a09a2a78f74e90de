//! The account ledger against real PostgreSQL (a fresh database per test, no Kafka): deposits
//! and their Idempotency-Key, the ledger's pages, the balance at a past moment, two writers
//! from the same version, the append-only table, the migration's backfill and
//! `sagashop-ledger verify` on a consistent and on a corrupted database. Needs `DATABASE_URL`:
//! run `cargo xtask test`.

use std::process::Command;

use axum::http::{HeaderValue, Method, StatusCode};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use payment_service::accounts::{self, WriteError};
use payment_service::ledger::Head;
use serde_json::{json, Value};
use shared::testing::{
    assert_error, assert_rejected, bad_bodies, invalid, patched, request, Reply, TestApp, JSON,
};
use sqlx::PgPool;
use uuid::Uuid;

/// A fresh, migrated database: its URL (for the `sagashop-ledger` binary) and the app over it.
async fn start_with_url() -> (String, TestApp) {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with `cargo xtask test`");
    let url = shared::db::create_fresh_database(&admin_url, "payment_ledger")
        .await
        .expect("creating a test database");
    let pool = shared::db::connect(&url, 5)
        .await
        .expect("connecting to the test database");
    payment_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    (
        url,
        TestApp::new(payment_service::router(pool.clone()), pool),
    )
}

async fn start() -> TestApp {
    start_with_url().await.1
}

async fn open(app: &TestApp, customer_id: &str, balance_cents: i64) {
    let (status, body) = app
        .send(
            Method::POST,
            "/accounts",
            Some(json!({"customer_id": customer_id, "balance_cents": balance_cents})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// `POST /accounts/{customer_id}/deposits` with `body`, and an Idempotency-Key if given.
async fn deposit(app: &TestApp, customer_id: &str, body: Value, key: Option<&str>) -> Reply {
    let mut request = request(
        Method::POST,
        &format!("/accounts/{customer_id}/deposits"),
        JSON,
        body.to_string().into_bytes(),
    );
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    }
    app.call(request).await
}

async fn deposited(app: &TestApp, customer_id: &str, amount_cents: i64) -> Value {
    let reply = deposit(
        app,
        customer_id,
        json!({"amount_cents": amount_cents}),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

async fn balance(app: &TestApp, customer_id: &str) -> i64 {
    let (status, body) = app
        .send(Method::GET, &format!("/accounts/{customer_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["balance_cents"].as_i64().expect("a balance")
}

/// Every entry of the customer's ledger, read page by page.
async fn ledger(app: &TestApp, customer_id: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .send(
                Method::GET,
                &format!("/accounts/{customer_id}/ledger?limit=100{cursor}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        entries.extend(page["entries"].as_array().expect("entries").clone());
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return entries,
        }
    }
}

fn kinds_and_balances(entries: &[Value]) -> Vec<(i64, &str, i64, i64)> {
    entries
        .iter()
        .map(|e| {
            (
                e["version"].as_i64().unwrap(),
                e["kind"].as_str().unwrap(),
                e["amount_cents"].as_i64().unwrap(),
                e["balance_after_cents"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test]
async fn opening_an_account_writes_its_opened_entry_and_deposits_append_to_it() {
    let app = start().await;
    open(&app, "alice", 5_000).await;
    let first = deposited(&app, "alice", 2_500).await;
    assert_eq!(
        (
            &first["customer_id"],
            &first["version"],
            &first["kind"],
            &first["amount_cents"],
            &first["balance_after_cents"],
            &first["order_id"]
        ),
        (
            &json!("alice"),
            &json!(2),
            &json!("DEPOSITED"),
            &json!(2_500),
            &json!(7_500),
            &Value::Null
        ),
        "{first}"
    );
    assert!(
        first["causation_id"]
            .as_str()
            .is_some_and(|id| id.parse::<Uuid>().is_ok()),
        "{first}"
    );
    deposited(&app, "alice", 1).await;
    assert_eq!(balance(&app, "alice").await, 7_501);
    let entries = ledger(&app, "alice").await;
    assert_eq!(
        kinds_and_balances(&entries),
        [
            (1, "OPENED", 5_000, 5_000),
            (2, "DEPOSITED", 2_500, 7_500),
            (3, "DEPOSITED", 1, 7_501)
        ]
    );
    assert_eq!(
        entries[1],
        first
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("customer_id");
                Value::Object(o)
            })
            .unwrap()
    );
    // The snapshot the saga locks moved with the ledger.
    let head = accounts::head(&app.pool, "alice").await.unwrap();
    assert_eq!(
        head,
        Some(Head {
            version: 3,
            balance_cents: 7_501
        })
    );
}

#[tokio::test]
async fn a_deposit_retried_with_its_idempotency_key_deposits_once() {
    let app = start().await;
    open(&app, "alice", 100).await;
    open(&app, "bob", 100).await;
    let body = json!({"amount_cents": 400});

    let first = deposit(&app, "alice", body.clone(), Some("key-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = deposit(&app, "alice", body.clone(), Some("key-1")).await;
    assert_eq!(
        (again.status, &again.body),
        (StatusCode::CREATED, &first.body)
    );
    // A quoted structured-field string is the same key.
    let quoted = deposit(&app, "alice", body.clone(), Some("\"key-1\"")).await;
    assert_eq!(
        (quoted.status, &quoted.body),
        (StatusCode::CREATED, &first.body)
    );
    assert_eq!(balance(&app, "alice").await, 500);

    let reused = deposit(&app, "alice", json!({"amount_cents": 401}), Some("key-1")).await;
    assert_error(
        &(reused.status, reused.body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(balance(&app, "alice").await, 500);

    // Keys are scoped to the customer.
    let bobs = deposit(&app, "bob", body.clone(), Some("key-1")).await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_eq!(bobs.body["customer_id"], "bob");
    assert_eq!(balance(&app, "bob").await, 500);

    // Without a key, every request deposits.
    deposit(&app, "alice", body.clone(), None).await;
    deposit(&app, "alice", body.clone(), None).await;
    assert_eq!(balance(&app, "alice").await, 1_300);

    for bad in ["", "   ", "\"\"", "ключ", &"k".repeat(256), "a b"] {
        let mut request = request(
            Method::POST,
            "/accounts/alice/deposits",
            JSON,
            body.to_string().into_bytes(),
        );
        if let Ok(value) = HeaderValue::from_bytes(bad.as_bytes()) {
            request.headers_mut().insert("idempotency-key", value);
        }
        let reply = app.call(request).await;
        assert_error(
            &(reply.status, reply.body),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        );
    }
    assert_eq!(balance(&app, "alice").await, 1_300);
    assert_eq!(
        count(&app.pool, "select count(*) from deposit_idempotency_keys").await,
        2
    );
}

#[tokio::test]
async fn concurrent_deposits_with_one_idempotency_key_deposit_once() {
    let app = start().await;
    open(&app, "carol", 0).await;
    let replies = futures::future::join_all((0..8).map(|_| {
        let app = app.clone();
        async move { deposit(&app, "carol", json!({"amount_cents": 250}), Some("burst")).await }
    }))
    .await;
    let first = &replies[0].body;
    for reply in &replies {
        assert_eq!((reply.status, &reply.body), (StatusCode::CREATED, first));
    }
    assert_eq!(balance(&app, "carol").await, 250);
    assert_eq!(ledger(&app, "carol").await.len(), 2);
}

#[tokio::test]
async fn bad_deposits_are_rejected_with_their_codes_and_deposit_nothing() {
    let app = start().await;
    open(&app, "dave", 1_000).await;
    let valid = json!({"amount_cents": 100});
    let field = |value| patched(&valid, "/amount_cents", value);
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("amount_cents missing", field(None)),
        invalid("amount_cents zero", field(Some(json!(0)))),
        invalid("amount_cents negative", field(Some(json!(-5)))),
        invalid("amount_cents a string", field(Some(json!("100")))),
        invalid("amount_cents fractional", field(Some(json!(1.5)))),
        invalid("amount_cents null", field(Some(Value::Null))),
        invalid(
            "amount_cents over the maximum",
            field(Some(json!(1_000_000_000_001_i64))),
        ),
        invalid("amount_cents beyond i64", field(Some(json!(1e20)))),
    ]);
    assert_rejected(&app, Method::POST, "/accounts/dave/deposits", cases).await;

    let beyond = deposit(
        &app,
        "dave",
        json!({"amount_cents": 999_999_999_001_i64}),
        None,
    )
    .await;
    assert_error(
        &(beyond.status, beyond.body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "balance_limit_exceeded",
    );
    let nobody = deposit(&app, "nobody", valid.clone(), Some("k")).await;
    assert_error(
        &(nobody.status, nobody.body),
        StatusCode::NOT_FOUND,
        "account_not_found",
    );
    let get = app.send(Method::GET, "/accounts/dave/deposits", None).await;
    assert_error(&get, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    assert_eq!(balance(&app, "dave").await, 1_000);
    assert_eq!(
        count(&app.pool, "select count(*) from ledger_entries").await,
        1
    );
    // Up to the limit exactly is fine.
    deposited(&app, "dave", 999_999_999_000).await;
    assert_eq!(balance(&app, "dave").await, 1_000_000_000_000);
}

#[tokio::test]
async fn the_ledger_pages_in_version_order_with_the_running_balance() {
    let app = start().await;
    open(&app, "erin", 10).await;
    for amount in 1..=6 {
        deposited(&app, "erin", amount).await;
    }
    let mut seen = Vec::new();
    let mut uri = "/accounts/erin/ledger?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = app.send(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["customer_id"], "erin");
        pages += 1;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 3);
        seen.extend(entries.iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), entries.last().unwrap()["version"].as_i64());
                uri = format!("/accounts/erin/ledger?limit=3&cursor={next}");
            }
            None => break,
        }
    }
    // 7 entries: 3 + 3 + 1, the last page says so.
    assert_eq!(pages, 3);
    let mut running = 0;
    for (i, entry) in seen.iter().enumerate() {
        running += entry["amount_cents"].as_i64().unwrap();
        assert_eq!(entry["version"], json!(i + 1));
        assert_eq!(entry["balance_after_cents"], json!(running));
    }
    assert_eq!(running, 10 + 21);
    let times: Vec<DateTime<Utc>> = seen
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A page that ends exactly at the last entry has no next cursor.
    let (_, exact) = app
        .send(Method::GET, "/accounts/erin/ledger?limit=7", None)
        .await;
    assert_eq!(exact["entries"].as_array().unwrap().len(), 7);
    assert_eq!(exact["next_cursor"], Value::Null);
    let (_, default) = app.send(Method::GET, "/accounts/erin/ledger", None).await;
    assert_eq!(default["entries"].as_array().unwrap().len(), 7);
    let (_, past_the_end) = app
        .send(Method::GET, "/accounts/erin/ledger?cursor=99", None)
        .await;
    assert_eq!(
        past_the_end,
        json!({"customer_id": "erin", "entries": [], "next_cursor": null})
    );

    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=",
        "cursor=-1",
        "cursor=x",
        "cursor=1.5",
        "cursor=99999999999999999999",
        "page=2",
    ] {
        let reply = app
            .send(Method::GET, &format!("/accounts/erin/ledger?{query}"), None)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let reply = app.send(Method::GET, "/accounts/nobody/ledger", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "account_not_found");
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[tokio::test]
async fn the_balance_as_of_a_moment_is_the_running_balance_of_the_last_entry_by_then() {
    let app = start().await;
    open(&app, "fay", 1_000).await;
    deposited(&app, "fay", 500).await;
    deposited(&app, "fay", 250).await;
    let entries = ledger(&app, "fay").await;
    let at = |i: usize| -> DateTime<Utc> {
        entries[i]["occurred_at"].as_str().unwrap().parse().unwrap()
    };
    let as_of = |time: String| {
        let app = app.clone();
        async move {
            app.send(Method::GET, &format!("/accounts/fay?as_of={time}"), None)
                .await
        }
    };
    let micro = Duration::microseconds(1);
    for (time, balance, version) in [
        (at(0), 1_000, 1),
        (at(1) - micro, 1_000, 1),
        (at(1), 1_500, 2),
        (at(2) - micro, 1_500, 2),
        (at(2), 1_750, 3),
        (at(2) + Duration::days(365), 1_750, 3),
    ] {
        let (status, body) = as_of(rfc3339(time)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (
                &body["balance_cents"],
                &body["version"],
                &body["customer_id"]
            ),
            (&json!(balance), &json!(version), &json!("fay")),
            "as_of {time}: {body}"
        );
        let shown: DateTime<Utc> = body["as_of"].as_str().unwrap().parse().unwrap();
        assert_eq!(shown, time);
    }
    // The same moment in another offset (its + sent as %2B).
    let paris = at(1)
        .with_timezone(&chrono::FixedOffset::east_opt(3_600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false)
        .replace('+', "%2B");
    let (_, body) = as_of(paris).await;
    assert_eq!(body["balance_cents"], 1_500, "{body}");
    // Without as_of: the snapshot, as before.
    let (_, now) = app.send(Method::GET, "/accounts/fay", None).await;
    assert_eq!(now, json!({"customer_id": "fay", "balance_cents": 1_750}));

    let before = as_of(rfc3339(at(0) - micro)).await;
    assert_error(&before, StatusCode::NOT_FOUND, "account_not_open");
    let message = before.1["error"]["message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!(
            "its ledger starts at {}",
            at(0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
        )),
        "{message}"
    );
    let nobody = app
        .send(
            Method::GET,
            "/accounts/nobody?as_of=2026-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_error(&nobody, StatusCode::NOT_FOUND, "account_not_found");
    for bad in [
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-01-01",
        "2026-01-01T00:00:00",
        // An unencoded + is a space in a query string.
        "2026-01-01T00:00:00+01:00",
        "",
    ] {
        let reply = as_of(bad.to_owned()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let unknown = app.send(Method::GET, "/accounts/fay?at=now", None).await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "invalid_query");
}

#[tokio::test]
async fn two_writers_from_the_same_version_conflict_and_one_fails() {
    let app = start().await;
    open(&app, "gus", 100).await;
    let pool = &app.pool;
    // Both read the head without a lock (the optimistic path), then append.
    let head = accounts::head(pool, "gus").await.unwrap().unwrap();
    assert_eq!(head.version, 1);
    let mut first = pool.begin().await.unwrap();
    let mut second = pool.begin().await.unwrap();
    let ten = head.deposit(10).unwrap();
    let twenty = head.deposit(20).unwrap();
    assert_eq!((ten.version, twenty.version), (2, 2));
    accounts::append(&mut first, "gus", head, &[ten], Uuid::now_v7())
        .await
        .expect("the first writer appends");
    // The second waits on the first's version 2, then finds it taken.
    let racing = tokio::spawn(async move {
        let result = accounts::append(&mut second, "gus", head, &[twenty], Uuid::now_v7()).await;
        (result, second)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!racing.is_finished(), "the second writer did not wait");
    first.commit().await.unwrap();
    let (result, second) = racing.await.unwrap();
    match result {
        Err(WriteError::Conflict {
            customer_id,
            version,
        }) => assert_eq!((customer_id.as_str(), version), ("gus", 1)),
        other => panic!("the second writer was not refused: {other:?}"),
    }
    drop(second);

    // A writer whose head is stale by the time it starts is refused at once.
    let mut late = pool.begin().await.unwrap();
    let stale = accounts::append(
        &mut late,
        "gus",
        head,
        &[head.deposit(5).unwrap()],
        Uuid::now_v7(),
    )
    .await;
    assert!(
        matches!(stale, Err(WriteError::Conflict { .. })),
        "{stale:?}"
    );
    drop(late);

    assert_eq!(balance(&app, "gus").await, 110);
    assert_eq!(
        kinds_and_balances(&ledger(&app, "gus").await),
        [(1, "OPENED", 100, 100), (2, "DEPOSITED", 10, 110)]
    );
    let verification = payment_service::verify::verify(pool).await.unwrap();
    assert!(verification.is_consistent(), "{verification}");
}

#[tokio::test]
async fn the_ledger_is_append_only() {
    let app = start().await;
    open(&app, "hal", 100).await;
    for statement in [
        "update ledger_entries set amount_cents = 1",
        "delete from ledger_entries",
        "truncate ledger_entries cascade",
    ] {
        let error = sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(ledger(&app, "hal").await.len(), 1);
}

/// Runs `sagashop-ledger ARGS...`: its exit code and what it printed.
fn sagashop_ledger(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sagashop-ledger"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("running sagashop-ledger");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn verify_passes_a_consistent_database_and_reports_each_account_that_does_not_add_up() {
    let (url, app) = start_with_url().await;
    for (customer, balance) in [("ivy", 1_000), ("jon", 2_000), ("kim", 0), ("lea", 50)] {
        open(&app, customer, balance).await;
    }
    deposited(&app, "ivy", 300).await;
    deposited(&app, "jon", 1).await;

    let (code, stdout, stderr) = sagashop_ledger(&["verify", "--database-url", &url]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "verified 4 accounts and 6 ledger entries: every balance is the fold of its ledger"
    );

    // A balance edited by hand, a ledger with a gap, an account with no ledger at all.
    sqlx::query("update accounts set balance_cents = balance_cents + 7 where customer_id = 'jon'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into ledger_entries (customer_id, version, kind, amount_cents, balance_after_cents, causation_id)
         values ('kim', 3, 'DEPOSITED', 5, 5, gen_random_uuid())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("insert into accounts (customer_id, balance_cents, version) values ('max', 10, 1)")
        .execute(&app.pool)
        .await
        .unwrap();

    let (code, stdout, stderr) = sagashop_ledger(&["verify", "--database-url", &url]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "MISMATCH customer=\"jon\": the account holds 2008 cents but its ledger folds to 2001 cents",
            "MISMATCH customer=\"kim\": version 3 follows version 1 (expected 2); the account holds 0 cents but its ledger folds to 5 cents; the account is at version 1 but its ledger at version 3",
            "MISMATCH customer=\"max\": the account holds 10 cents (version 1) but has no ledger entry",
            "verified 5 accounts and 7 ledger entries: 3 accounts do not add up",
        ],
        "{stdout}"
    );
    let verification = payment_service::verify::verify(&app.pool).await.unwrap();
    let bad: Vec<&str> = verification
        .findings
        .iter()
        .map(|finding| finding.customer_id.as_str())
        .collect();
    assert_eq!(bad, ["jon", "kim", "max"]);

    let (code, _, stderr) = sagashop_ledger(&[
        "verify",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.starts_with("sagashop-ledger: "), "{stderr}");
}

#[tokio::test]
async fn verify_reports_an_entry_of_an_unknown_kind_for_its_account_and_goes_on() {
    let (url, app) = start_with_url().await;
    open(&app, "nia", 100).await;
    open(&app, "oz", 200).await;
    // An entry of a kind a later release would write.
    sqlx::raw_sql(
        "alter table ledger_entries drop constraint ledger_entries_kind_check;
         insert into ledger_entries (customer_id, version, kind, amount_cents, balance_after_cents, causation_id)
         values ('nia', 2, 'GIFTED', 5, 105, gen_random_uuid());
         update accounts set balance_cents = 105, version = 2 where customer_id = 'nia';",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let (code, stdout, stderr) = sagashop_ledger(&["verify", "--database-url", &url]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "MISMATCH customer=\"nia\": version 2 has an unknown kind \"GIFTED\"",
            "verified 2 accounts and 3 ledger entries: 1 account does not add up",
        ],
        "{stdout}"
    );
}

#[tokio::test]
async fn the_migration_gives_existing_accounts_a_ledger_that_folds_to_their_balance() {
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let url = shared::db::create_fresh_database(&admin_url, "payment_backfill")
        .await
        .unwrap();
    let pool = shared::db::connect(&url, 2).await.unwrap();
    // The schema as the release before the ledger left it.
    let before = std::env::temp_dir().join(format!("payment-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&before).unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for file in std::fs::read_dir(&migrations).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        if name.as_str() < "0004" {
            std::fs::copy(file.path(), before.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&before).unwrap();
    sqlx::query(
        "insert into accounts (customer_id, balance_cents, updated_at) values
             ('old-a', 700, '2026-01-02T03:04:05Z'), ('old-b', 0, '2026-02-03T04:05:06Z')",
    )
    .execute(&pool)
    .await
    .unwrap();

    payment_service::migrate(&pool).await.unwrap();
    let verification = payment_service::verify::verify(&pool).await.unwrap();
    assert!(verification.is_consistent(), "{verification}");
    assert_eq!((verification.accounts, verification.entries), (2, 2));
    let app = TestApp::new(payment_service::router(pool.clone()), pool);
    let entries = ledger(&app, "old-a").await;
    assert_eq!(kinds_and_balances(&entries), [(1, "OPENED", 700, 700)]);
    assert_eq!(entries[0]["occurred_at"], "2026-01-02T03:04:05Z");
    let (_, then) = app
        .send(
            Method::GET,
            "/accounts/old-a?as_of=2026-01-02T03:04:05Z",
            None,
        )
        .await;
    assert_eq!(then["balance_cents"], 700, "{then}");
    let earlier = app
        .send(
            Method::GET,
            "/accounts/old-a?as_of=2026-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_error(&earlier, StatusCode::NOT_FOUND, "account_not_open");
    // And they carry on from there.
    deposited(&app, "old-b", 5).await;
    assert_eq!(
        kinds_and_balances(&ledger(&app, "old-b").await),
        [(1, "OPENED", 0, 0), (2, "DEPOSITED", 5, 5)]
    );
}

#[tokio::test]
async fn a_deposit_key_older_than_its_window_is_pruned_and_a_retry_deposits_again() {
    let app = start().await;
    open(&app, "nia", 0).await;
    let body = json!({"amount_cents": 100});
    let old = deposit(&app, "nia", body.clone(), Some("old-key")).await;
    let young = deposit(&app, "nia", body.clone(), Some("young-key")).await;
    assert_eq!(
        (old.status, young.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    sqlx::query(
        "update deposit_idempotency_keys set created_at = now() - interval '2 hours'
         where idempotency_key = 'old-key'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let rule = payment_service::deposit_key_retention(3_600_000);
    let pruned = shared::retention::prune(&app.pool, &rule, 100, &Default::default())
        .await
        .expect("pruning deposit keys");
    assert_eq!(pruned.rows, 1);
    let keys: Vec<String> =
        sqlx::query_scalar("select idempotency_key from deposit_idempotency_keys")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(keys, ["young-key"]);

    let retry_of_young = deposit(&app, "nia", body.clone(), Some("young-key")).await;
    assert_eq!(
        (retry_of_young.status, &retry_of_young.body),
        (StatusCode::CREATED, &young.body)
    );
    let retry_of_old = deposit(&app, "nia", body, Some("old-key")).await;
    assert_eq!(retry_of_old.status, StatusCode::CREATED);
    assert_eq!(retry_of_old.body["version"], 4, "{}", retry_of_old.body);
    assert_eq!(balance(&app, "nia").await, 300);
    // The ledger keeps every entry whatever happens to the keys.
    assert_eq!(ledger(&app, "nia").await.len(), 4);
}
