//! The database roles of a service (README.md, Security): it migrates as the owner of its
//! database (`DATABASE_MIGRATION_URL`) and runs as a role (`DATABASE_URL`) that can read and
//! write rows of its own tables and nothing else. The databases and roles are made with the
//! SQL the compose stack runs (docker/postgres/service-database.sql), on the PostgreSQL server
//! at `DATABASE_URL`, with the broker at `KAFKA_BROKERS` (both set by `cargo xtask test`).

use std::time::Duration;

use clap::Parser;
use devenv::postgres::create_service_database;
use devenv::ServiceDatabase;
use e2e::eventually;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use shared::events::{PricedLine, ShippingAddress, StockReserved};
use shared::topics::Topic;
use shared::topology::{ORDER, PAYMENT};
use shared::Envelope;
use sqlx::{Connection, PgConnection};
use url::Url;
use uuid::Uuid;

/// PostgreSQL's SQLSTATE for "permission denied".
const INSUFFICIENT_PRIVILEGE: &str = "42501";

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run with `cargo xtask test`"))
}

/// `service`'s database and roles, with names of their own (roles are server-wide).
fn service_database(service: &shared::topology::Service, run: &str) -> ServiceDatabase {
    ServiceDatabase {
        database: format!("e2e_roles_{}_{run}", service.name),
        owner: format!("{}_{run}", service.owner_role()),
        owner_password: Uuid::new_v4().simple().to_string(),
        runtime: format!("{}_{run}", service.runtime_role()),
        runtime_password: Uuid::new_v4().simple().to_string(),
    }
}

async fn connect(url: &Url) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url.as_str()).await
}

/// The SQLSTATE `statement` fails with on `conn` (panics if it succeeds).
async fn refused(conn: &mut PgConnection, statement: &str) -> String {
    match sqlx::raw_sql(statement).execute(&mut *conn).await {
        Ok(_) => panic!("the runtime role may run `{statement}`"),
        Err(error) => error
            .as_database_error()
            .and_then(|error| error.code().map(|code| code.into_owned()))
            .unwrap_or_else(|| panic!("`{statement}` failed without a SQLSTATE: {error}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_reads_and_writes_rows_but_cannot_change_the_schema_or_leave_its_database()
{
    let server = Url::parse(&required("DATABASE_URL")).expect("DATABASE_URL is a URL");
    let brokers = required("KAFKA_BROKERS");
    let run = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let payment = service_database(&PAYMENT, &run);
    let order = service_database(&ORDER, &run);
    let mut admin = connect(&server).await.expect("connecting as the admin");
    for database in [&payment, &order] {
        create_service_database(&mut admin, database)
            .await
            .expect("the compose SQL creates the database and its roles");
    }

    // The payment service migrates as the owner and runs as the runtime role.
    let prefix = format!("roles-{run}.");
    let config = payment_service::Config::try_parse_from([
        "payment-service",
        "--database-url",
        payment.url(&server, false).as_str(),
        "--database-migration-url",
        payment.url(&server, true).as_str(),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--kafka-brokers",
        &brokers,
        "--kafka-topic-prefix",
        &prefix,
        "--kafka-group-id",
        &format!("{prefix}{}", PAYMENT.group_id),
    ])
    .expect("valid arguments");
    let application = payment_service::Application::build(config)
        .await
        .expect("the payment service starts with a runtime role");
    let base = format!("http://127.0.0.1:{}", application.port());
    let shutdown = application.shutdown_token();
    let running = tokio::spawn(application.run_until_stopped());

    // It serves: the HTTP API writes rows ...
    let http = reqwest::Client::new();
    let customer = format!("roles-{run}");
    let opened = http
        .post(format!("{base}/accounts"))
        .json(&json!({"customer_id": customer, "balance_cents": 1000}))
        .send()
        .await
        .expect("POST /accounts");
    assert_eq!(opened.status(), 201, "{:?}", opened.text().await);
    // ... the consumer records an event in the inbox and applies it, and the relay publishes
    // what it emitted (reads and marks outbox rows).
    let order_id = Uuid::now_v7();
    let reserved = StockReserved {
        order_id,
        customer_id: customer.clone(),
        items: vec![PricedLine {
            sku: "roles".to_owned(),
            quantity: 1,
            unit_price_cents: 300,
        }],
        total_cents: 300,
        shipping_address: ShippingAddress {
            country: "FR".to_owned(),
            rest: Default::default(),
        },
    };
    let envelope = Envelope::new("inventory", order_id, None, &reserved);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("a producer");
    producer
        .send(
            FutureRecord::to(&Topic::Inventory.name(&prefix))
                .key(&order_id.to_string())
                .payload(&serde_json::to_vec(&envelope).expect("JSON"))
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event_type",
                    value: Some(&envelope.event_type),
                })),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("the broker accepts the event");
    let payment_url = format!("{base}/payments/{order_id}");
    let charged: Value = eventually("the payment to be charged", Duration::from_secs(30), || {
        let request = http.get(&payment_url).send();
        async move {
            let reply = request.await.ok()?;
            let body: Value = reply.json().await.ok()?;
            (body["status"] == "CHARGED").then_some(body)
        }
    })
    .await;
    assert_eq!(charged["amount_cents"], 300, "{charged}");
    let owner = shared::db::connect(payment.url(&server, true).as_str(), 1)
        .await
        .expect("connecting as the owner");
    eventually(
        "the relay to publish the charge",
        Duration::from_secs(30),
        || {
            let owner = &owner;
            async move {
                let published: (i64, i64) = sqlx::query_as(
                    "select (select count(*) from outbox_published),
                        (select count(*) from outbox)",
                )
                .fetch_one(owner)
                .await
                .ok()?;
                (published == (1, 0)).then_some(())
            }
        },
    )
    .await;

    // But the runtime role cannot change the schema, in any schema it can reach ...
    let mut runtime = connect(&payment.url(&server, false))
        .await
        .expect("the runtime role connects to its own database");
    for statement in [
        "create table intruder (id int)",
        "create table public.intruder (id int)",
        "create schema intruder",
        "drop table accounts",
        "alter table accounts add column intruder int",
        "truncate outbox",
        "create index intruder on inbox (topic)",
        "create function intruder() returns int language sql as 'select 1'",
        "delete from _sqlx_migrations",
    ] {
        assert_eq!(
            refused(&mut runtime, statement).await,
            INSUFFICIENT_PRIVILEGE,
            "{statement}"
        );
    }
    // ... nor open another service's database.
    for database in [order.database.as_str()] {
        let mut other = payment.url(&server, false);
        other.set_path(database);
        let error = connect(&other)
            .await
            .err()
            .unwrap_or_else(|| panic!("the payment runtime role may connect to {database}"));
        let code = error
            .as_database_error()
            .and_then(|error| error.code().map(|code| code.into_owned()));
        assert_eq!(
            code.as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{database}: {error}"
        );
    }
    // While its owner may, which is why only the start-up migration step connects as it.
    sqlx::raw_sql("create table owner_may (id int); drop table owner_may")
        .execute(&owner)
        .await
        .expect("the owner creates tables");

    shutdown.cancel();
    running
        .await
        .expect("the service task")
        .expect("the service stops cleanly");
}
