//! The Bus conformance suite of `chat-core`, against a real Redis
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`), one cluster per case
//! under its own key prefix, with a 2 s presence TTL.

mod common;

use std::sync::Arc;

use chat_core::{
    Bus,
    testing::{BusFixture, Cluster},
};

async fn setup() -> Option<BusFixture> {
    if !common::redis_available("the Bus conformance suite").await {
        return None;
    }
    let prefix = common::unique_prefix();
    let nodes = prefix.clone();
    let cluster = Cluster::multi_node(common::TTL, move |name| {
        let prefix = nodes.clone();
        async move { common::node(&prefix, &name).await as Arc<dyn Bus> }
    });
    Some(BusFixture::new(cluster).with_cleanup(move || async move {
        common::delete_prefix(&prefix).await;
    }))
}

chat_core::bus_conformance_tests!(setup);
