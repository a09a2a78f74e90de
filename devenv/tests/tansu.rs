//! The private broker devenv starts carries the header-index workaround from its first start
//! on, and keeps it across a kill and restart (needs tansu installed, as `cargo xtask test`
//! makes sure).

use devenv::broker::header_index;
use devenv::{Stop, Tansu};

#[tokio::test]
async fn every_private_broker_has_the_header_index_before_any_traffic() {
    let mut tansu = Tansu::start(&Stop::never(), None)
        .await
        .expect("starting tansu");
    let database = tansu.database();
    assert!(
        header_index::is_applied(&database).expect("reading the broker's schema"),
        "{} has no index on header (topition, offset_id)",
        database.display()
    );
    assert!(
        tansu.is_running(),
        "the broker runs after the index was applied"
    );
    std::net::TcpStream::connect(tansu.address()).expect("the broker accepts connections");

    tansu.kill().expect("killing tansu");
    tansu.start_again().await.expect("starting tansu again");
    assert!(header_index::is_applied(&database).expect("reading the broker's schema"));
    std::net::TcpStream::connect(tansu.address()).expect("the broker accepts connections");
}
