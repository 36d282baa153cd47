//! The harness itself: throwaway PostgreSQL and NATS start, restart on the same port, and stop.

use testkit::{Nats, Postgres};

#[tokio::test]
async fn postgres_is_logical_and_restarts_on_its_port() {
    let mut pg = Postgres::start().await.unwrap();
    let client = pg.client().await.unwrap();
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    drop(client);
    let port = pg.port();
    pg.stop().unwrap();
    assert!(pg.client().await.is_err(), "stopped cluster still answers");
    pg.start_again().await.unwrap();
    assert_eq!(pg.port(), port);
    let one: i32 = pg
        .client()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn nats_restarts_on_its_port_with_its_store() {
    let mut nats = Nats::start().await.unwrap();
    let port = nats.port();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("t.1", "x".into()).await.unwrap().await.unwrap();
    nats.kill().unwrap();
    nats.start_again().await.unwrap();
    assert_eq!(nats.port(), port);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1);
}
