//! A browser's WebSocket, as the tests of every crate use it: connect to a notifier's
//! `/ws`, read its JSON messages, collect `seq`s.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Browser = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://<address>/ws?<query>` (`token=…`, `since=…`).
pub async fn connect(address: &str, query: &str) -> Result<Browser, Error> {
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/ws?{query}")).await?;
    Ok(socket)
}

/// The next JSON message, skipping pings; `None` when nothing comes within `wait` or the
/// socket closed.
pub async fn next_json(socket: &mut Browser, wait: Duration) -> Option<serde_json::Value> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Every numbered event until `last` arrives; panics on a timeout.
pub async fn seqs_until(socket: &mut Browser, last: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let message = next_json(socket, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("stopped after {seqs:?}"));
        if let Some(seq) = message["seq"]
            .as_i64()
            .filter(|_| message["type"] != "hello")
        {
            seqs.push(seq);
        }
    }
    seqs
}
