//! The reader keeps its own offset: its connections reset midway (through the test proxy), it
//! subscribes again after the last offset it handed out: no gap, no duplicate.

use tokio_util::sync::CancellationToken;
use warren::amqp::{AmqpUrl, StreamOffset};
use warren::archive::StreamReader;

use super::{archived, publish_all, series};
use crate::support::now_ms;
use crate::support::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_connection_is_reset_resumes_without_gap_or_duplicate() {
    let (t, conn) = archived("archive-resume").await;
    const N: u64 = 300;
    publish_all(&conn, &t, &series(now_ms() - 1_000_000, N as usize)).await;
    let proxy = Proxy::start(crate::support::node::broker_addr()).await;
    let url: AmqpUrl = proxy.amqp_url(5).parse().unwrap();
    let stream = &t.topology.archive.as_ref().unwrap().name;
    let shutdown = CancellationToken::new();
    // A small credit, so most of the stream is still on the broker when the resets come.
    let mut reader = StreamReader::open(&url, stream, StreamOffset::First, 10)
        .await
        .unwrap();
    let mut offsets = Vec::new();
    while (offsets.len() as u64) < N {
        let r = reader.next(&shutdown).await.unwrap().expect("a record");
        offsets.push(r.offset);
        if offsets.len() == 50 || offsets.len() == 180 {
            proxy.reset_all();
        }
    }
    assert_eq!(
        offsets,
        (0..N).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert!(
        reader.resubscribed() >= 2,
        "resubscribed {} times",
        reader.resubscribed()
    );
    reader.close().await;
    t.cleanup(&conn).await;
}
