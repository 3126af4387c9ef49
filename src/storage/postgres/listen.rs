//! Other processes' commits, as they happen: each commit's transaction notifies channel
//! `jetstream_commits` with its writer id (a trigger on `writer_positions`, migration 7; a rebuild's
//! swap notifies too), and one connection per process listens. The API clears its read cache on
//! a foreign commit and wakes its live streams, so a fleet instance sees another's writes within
//! milliseconds instead of the cache's ttl.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::tls;
use crate::storage::url::PgTls;

pub(super) const CHANNEL: &str = "jetstream_commits";

/// Listens until every receiver is gone; counts foreign commits in `tx` (and bumps it each time
/// listening starts, when notifications may have been missed).
pub(super) async fn listen(config: tokio_postgres::Config, tls: PgTls, writer: i64, tx: watch::Sender<u64>) {
    let own = writer.to_string();
    while !tx.is_closed() {
        match once(&config, &tls, &own, &tx).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "listening for other instances' commits failed; reconnecting in 1 s"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn once(config: &tokio_postgres::Config, tls: &PgTls, own: &str, tx: &watch::Sender<u64>) -> anyhow::Result<()> {
    let (client, mut connection) = config.connect(tls::connector(tls).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
    // Bounded: the driver waits for the loop below (a connection that keeps failing must not
    // fill memory), and it is aborted whenever this function returns.
    let (msgs_tx, mut msgs) = futures::channel::mpsc::channel(64);
    let stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let _driver = AbortOnDrop(tokio::spawn(stream.map(Ok).forward(msgs_tx)));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Commits made before this point were not heard: whatever was cached meanwhile — before a
    // reconnection, or at start-up, where requests are served while this connection is being
    // opened — may miss them. Counting one commit clears it.
    tx.send_modify(|n| *n = n.wrapping_add(1));
    let mut closed = std::pin::pin!(tx.closed());
    loop {
        tokio::select! {
            _ = &mut closed => return Ok(()),
            m = msgs.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.payload() != own => {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the listening connection closed"),
            },
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
