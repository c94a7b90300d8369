//! The Server-Sent Events transport, for clients that cannot open a WebSocket — `id: <seq>`
//! on every numbered event, a comment line as ping — as a client of the shared delivery
//! loop (`deliver.rs`). The request (`Last-Event-ID`, `since`) is the web side's
//! (`web/streams.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::push::deliver::{Client, Ending, Heard, deliver};
use crate::push::feed::{Feed, Opening};
use crate::push::frame::Frame;
use crate::push::hub::Hub;

/// Delivers an opened feed as Server-Sent Events: the chunks of the response body, for as
/// long as the connection lives.
pub fn start(
    hub: Arc<Hub>,
    feed: Feed,
    opening: Opening,
    user_id: String,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Bytes>(hub.sockets.send_queue.max(1));
    tokio::spawn(stream_events(feed, opening, tx, hub, user_id));
    receiver_stream(rx)
}

fn sse_frame(frame: &Frame) -> Bytes {
    match frame.seq {
        Some(seq) => Bytes::from(format!("id: {seq}\ndata: {}\n\n", frame.json.as_str())),
        None => Bytes::from(format!("data: {}\n\n", frame.json.as_str())),
    }
}

async fn stream_events(
    feed: Feed,
    opening: Opening,
    tx: mpsc::Sender<Bytes>,
    hub: Arc<Hub>,
    user_id: String,
) {
    let _open = hub.track();
    tracing::info!(%user_id, replayed = opening.replay.len(), "SSE connection opened");
    let mut client = EventStreamClient {
        tx,
        send_timeout: Duration::from_secs(hub.sockets.send_timeout_secs),
    };
    let ending = deliver(
        &mut client,
        feed,
        opening,
        hub.sockets,
        hub.shutdown_signal(),
    )
    .await;
    tracing::info!(%user_id, ending = ending.as_str(), "SSE connection closed");
}

/// An mpsc receiver as a stream.
fn receiver_stream(mut rx: mpsc::Receiver<Bytes>) -> impl Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The response body's sending end as a [`Client`] of [`deliver`].
struct EventStreamClient {
    tx: mpsc::Sender<Bytes>,
    send_timeout: Duration,
}

impl EventStreamClient {
    async fn send_chunk(&mut self, chunk: Bytes) -> bool {
        matches!(
            tokio::time::timeout(self.send_timeout, self.tx.send(chunk)).await,
            Ok(Ok(()))
        )
    }
}

impl Client for EventStreamClient {
    /// An event stream has no way back: only a closed body says the client left.
    const ANSWERS_PINGS: bool = false;

    async fn send(&mut self, frame: &Frame) -> bool {
        self.send_chunk(sse_frame(frame)).await
    }

    async fn ping(&mut self) -> bool {
        self.send_chunk(Bytes::from_static(b": ping\n\n")).await
    }

    async fn heard(&mut self) -> Heard {
        self.tx.closed().await;
        Heard::Closed
    }

    /// Nothing to say: the stream just ends, and the browser reconnects with
    /// `Last-Event-ID`.
    async fn close(&mut self, _ending: Ending, _reason: &'static str) {}
}
