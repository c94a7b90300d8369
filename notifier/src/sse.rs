//! `/events`: the same stream as Server-Sent Events, for clients that cannot open a
//! WebSocket — `id: <seq>` on every numbered event, `Last-Event-ID` (or `since`) to resume,
//! a comment line as ping — as a client of the shared delivery loop (`deliver.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::deliver::{Client, Ending, Heard, deliver};
use crate::http::{AppState, Body, OpenConnection, authenticate, json, query, since};
use crate::replay::{Feed, Frame, OpenError};
use crate::sessions::ConnectionLimit;

/// The same stream as Server-Sent Events: `id: <seq>` on every numbered event, and
/// `Last-Event-ID` (or `since`) to resume.
pub async fn stream(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match authenticate(&request, &state) {
        Ok(user_id) => user_id,
        Err(refusal) => return refusal.into_response(),
    };
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let params = query(&request);
    let since = match since(
        last_event_id
            .as_deref()
            .or(params.get("since").map(String::as_str)),
    ) {
        Ok(since) => since,
        Err(refusal) => return refusal.into_response(),
    };
    let (feed, opening) =
        match Box::pin(Feed::open(&state.sessions, &state.pool, &user_id, since)).await {
            Ok(opened) => opened,
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "cannot open the feed");
                let status = match err {
                    OpenError::Limit(ConnectionLimit::PerUser(_)) => StatusCode::TOO_MANY_REQUESTS,
                    OpenError::Limit(ConnectionLimit::Total(_)) | OpenError::Db(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                return json(status, serde_json::json!({"error": err.to_string()}));
            }
        };
    let (tx, rx) = mpsc::channel::<Bytes>(state.sockets.send_queue.max(1));
    tokio::spawn(stream_events(feed, opening, tx, state.clone(), user_id));
    let body =
        StreamBody::new(tokio_stream(rx).map(|chunk| Ok::<_, Infallible>(BodyFrame::data(chunk))));
    let mut response = Response::new(BodyExt::boxed(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn sse_frame(frame: &Frame) -> Bytes {
    match frame.seq {
        Some(seq) => Bytes::from(format!("id: {seq}\ndata: {}\n\n", frame.json.as_str())),
        None => Bytes::from(format!("data: {}\n\n", frame.json.as_str())),
    }
}

async fn stream_events(
    feed: Feed,
    opening: crate::replay::Opening,
    tx: mpsc::Sender<Bytes>,
    state: Arc<AppState>,
    user_id: String,
) {
    let _open = OpenConnection::new(state.clone());
    tracing::info!(%user_id, replayed = opening.replay.len(), "SSE connection opened");
    let mut client = EventStreamClient {
        tx,
        send_timeout: Duration::from_secs(state.sockets.send_timeout_secs),
    };
    let ending = deliver(
        &mut client,
        feed,
        opening,
        state.sockets,
        state.shutdown.clone(),
    )
    .await;
    tracing::info!(%user_id, ending = ending.as_str(), "SSE connection closed");
}

/// An mpsc receiver as a stream.
fn tokio_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
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
