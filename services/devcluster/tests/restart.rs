//! `Server::restart`: a server killed -9 comes back on the same address
//! with its data, as the chaos benchmark needs.

use drover_devcluster::Server;

#[tokio::test]
async fn etcd_and_nats_come_back_on_the_same_address_with_their_data() {
    let mut etcd = Server::etcd(None).await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    client.put("k", "v", None).await.unwrap();
    let before = etcd.pid();
    etcd.restart().await.unwrap();
    assert_ne!(etcd.pid(), before, "a new process");
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let got = client.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");

    let mut nats = Server::nats(None).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "kept".into(),
        subjects: vec!["kept.>".into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .get_info()
    .await
    .unwrap();
    js.publish("kept.one", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    nats.restart().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.unwrap());
    let mut stream = js.get_stream("kept").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}
