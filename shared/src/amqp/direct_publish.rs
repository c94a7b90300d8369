//! A publish-only AMQP 0-9-1 connection that writes from the publishing task's own thread
//! and lets one socket write carry every publish of that moment: ingest's hot path.
//!
//! Why not lapin's channel: lapin runs its socket on a thread of its own (`lapin-io-loop`),
//! so every publish is handed to that thread and every confirm handed back, and it writes
//! each publish as it comes. Profiles of ingest at saturation put about a quarter of its CPU
//! in those hand-offs, and the broker spent about twice the CPU per publish when publishes
//! reached it one by one instead of in groups (`docs/benchmarks.md`, ingest).
//!
//! Here a publish encodes its frames, appends them to the connection's outgoing buffer and
//! takes the next delivery tag under one lock; the first publish to find no write under way
//! spawns one on its own runtime, which runs after the tasks ready at that moment, so one
//! `write` carries all their publishes. A reader task reads the broker's confirms and wakes
//! each publisher whose tag they cover. Channel 1 is the only channel, in confirm mode.
//!
//! What it does not do: consume, declare (the [`Reconnecting`](super::Reconnecting) link
//! that builds it declares the topology on its lapin connection first), TLS (`amqps://` is
//! refused at connect with a clear error), or reconnect by itself: when it breaks it says
//! so ([`DirectPublisher::is_healthy`]) and the link that owns it builds a new one.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

use crate::amqp::publish::{Outgoing, PublishError};

/// The only channel this connection opens.
const CHANNEL: u16 = 1;
/// Frame type, channel, size, then the frame-end octet after the payload.
const FRAME_OVERHEAD: usize = 8;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// How long the handshake and a clean close may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Url(String),
    #[error("TLS (amqps://) is not supported by the direct publisher")]
    Tls,
    #[error("cannot reach the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker closed the handshake: {0}")]
    Refused(String),
    #[error("unexpected frame during the handshake: {0}")]
    Protocol(String),
    #[error("the handshake took longer than {0:?}")]
    Timeout(Duration),
}

impl From<ConnectError> for lapin::Error {
    fn from(error: ConnectError) -> Self {
        std::io::Error::other(error.to_string()).into()
    }
}

/// One confirmed-publish connection; cheap to share behind an `Arc`. Dropping it closes
/// the connection cleanly in the background.
pub struct DirectPublisher {
    shared: Arc<Shared>,
    /// Tells the reader to close the connection (also when this is dropped).
    stop: watch::Sender<bool>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Largest body chunk per frame (the negotiated frame size less the frame's overhead).
    max_body_chunk: usize,
}

#[derive(Default)]
struct State {
    /// Encoded frames waiting for the next write.
    outgoing: Vec<u8>,
    /// Whether a write is under way or scheduled (it takes whatever is in `outgoing`).
    flushing: bool,
    /// The delivery tag the next publish gets (the broker numbers publishes from 1).
    next_tag: u64,
    /// Publishes waiting for their confirm, by delivery tag.
    pending: BTreeMap<u64, Pending>,
    /// Message ids the broker returned as unroutable; the confirm that follows answers them.
    returned: HashSet<ShortString>,
    /// Why the connection no longer takes publishes (set once).
    broken: Option<String>,
}

struct Pending {
    message_id: Option<ShortString>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

impl DirectPublisher {
    /// Opens a connection to the node at `url` (an `amqp://` URL as in `AMQP_URL`), opens
    /// channel 1 and puts it in confirm mode. The reader runs on the caller's runtime.
    pub async fn connect(url: &str, connection_name: &str) -> Result<Self, ConnectError> {
        let uri = AMQPUri::from_str(url).map_err(ConnectError::Url)?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(ConnectError::Tls);
        }
        let handshake = async {
            let socket =
                TcpStream::connect((uri.authority.host.as_str(), uri.authority.port)).await?;
            socket.set_nodelay(true)?;
            let (mut read, mut write) = socket.into_split();
            let mut inbox = Vec::with_capacity(16 * 1024);
            let tuned = handshake(&uri, connection_name, &mut read, &mut write, &mut inbox).await?;
            Ok::<_, ConnectError>((read, write, inbox, tuned))
        };
        let (read, write, inbox, tuned) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(HANDSHAKE_TIMEOUT))??;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_tag: 1,
                ..State::default()
            }),
            writer: tokio::sync::Mutex::new(write),
            max_body_chunk: tuned.frame_max as usize - FRAME_OVERHEAD,
        });
        let (stop, stopped) = watch::channel(false);
        let reader = tokio::spawn(read_until_closed(
            shared.clone(),
            read,
            inbox,
            tuned.heartbeat,
            stopped,
        ));
        Ok(Self {
            shared,
            stop,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// Whether publishes can go through this connection.
    pub fn is_healthy(&self) -> bool {
        self.shared.state().broken.is_none()
    }

    /// Publishes on channel 1 and waits up to `timeout` for the broker's confirm. An
    /// unroutable mandatory message is told by its `message_id` (the broker's return names
    /// no delivery tag), so a mandatory message needs one: every webhook has it. A nack
    /// marks the connection broken (RabbitMQ 3.10 keeps nacking on a channel that published
    /// while a quorum queue's new leader was unknown), so its owner builds a new one.
    pub async fn publish(
        &self,
        message: Outgoing<'_>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let message_id = message.properties.message_id().clone();
        if message.mandatory && message_id.is_none() {
            return Err(PublishError::Unroutable(
                "a mandatory message needs a message_id to be told apart if returned".into(),
            ));
        }
        let frames = encode_publish(message, self.shared.max_body_chunk)?;
        let (reply, confirmed) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if state.broken.is_some() {
                return Err(PublishError::BrokerUnavailable);
            }
            let tag = state.next_tag;
            state.next_tag += 1;
            state.outgoing.extend_from_slice(&frames);
            state.pending.insert(tag, Pending { message_id, reply });
            self.shared.write_soon(state);
        }
        match tokio::time::timeout(timeout, confirmed).await {
            Err(_) => Err(PublishError::Timeout(timeout)),
            Ok(Err(_)) => Err(PublishError::BrokerUnavailable),
            Ok(Ok(outcome)) => outcome,
        }
    }

    /// Waits up to `timeout` for the publishes in flight, then closes the connection
    /// cleanly (`connection.close`, answered by the broker).
    pub async fn close(&self, timeout: Duration) {
        let drained = async {
            while !self.shared.state().pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, drained).await;
        let _ = self.stop.send(true);
        let reader = self.reader.lock().expect("not poisoned").take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
    }
}

impl Drop for DirectPublisher {
    fn drop(&mut self) {
        // The reader sees the sender gone, closes the connection and answers what waits.
        self.shared.break_with("connection closed by this service");
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Marks the connection broken and answers every publish still waiting.
    fn break_with(&self, reason: &str) {
        let pending = {
            let mut state = self.state();
            state.broken.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut state.pending)
        };
        for (_, waiting) in pending {
            let _ = waiting.reply.send(Err(PublishError::BrokerUnavailable));
        }
    }

    /// Queues a control frame (heartbeat, close, close-ok) behind the publishes.
    fn send(self: &Arc<Self>, frame: &AMQPFrame, reason_if_broken: &str) {
        let Ok(bytes) = encode(frame) else {
            self.break_with(reason_if_broken);
            return;
        };
        let mut state = self.state();
        state.outgoing.extend_from_slice(&bytes);
        self.write_soon(state);
    }

    /// Lets a write carry what was just appended to `outgoing`: starts one (after the
    /// lock is released) unless one is under way, which takes it along.
    fn write_soon(self: &Arc<Self>, mut state: std::sync::MutexGuard<'_, State>) {
        if !std::mem::replace(&mut state.flushing, true) {
            drop(state);
            tokio::spawn(write_outgoing(self.clone()));
        }
    }

    /// The broker confirmed (or refused) delivery tag `tag`, and every earlier one when
    /// `multiple`.
    fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let settled: Vec<(Option<ShortString>, oneshot::Sender<_>)> = {
            let mut state = self.state();
            let tags: Vec<u64> = if multiple {
                state.pending.range(..=tag).map(|(tag, _)| *tag).collect()
            } else {
                vec![tag]
            };
            let state = &mut *state;
            let mut settled = Vec::with_capacity(tags.len());
            for tag in tags {
                let Some(pending) = state.pending.remove(&tag) else {
                    continue;
                };
                let returned = pending.message_id.filter(|id| state.returned.remove(id));
                settled.push((returned, pending.reply));
            }
            settled
        };
        for (returned, reply) in settled {
            let outcome = match (acked, returned) {
                (false, _) => Err(PublishError::Nacked),
                (true, Some(id)) => Err(PublishError::Unroutable(format!(
                    "message {id} returned: no queue is bound"
                ))),
                (true, None) => Ok(()),
            };
            let _ = reply.send(outcome);
        }
    }
}

/// Writes what is in the outgoing buffer until it is empty. Spawned by the publish that
/// found no write under way, so it runs after the tasks ready at that moment have
/// appended theirs: one write carries them all.
async fn write_outgoing(shared: Arc<Shared>) {
    /// Lets the next frame start a write if this task is dropped mid-write (its runtime
    /// shutting down); every other way out clears `flushing` under the state lock itself.
    struct DroppedMidWrite<'a>(&'a Shared);
    impl Drop for DroppedMidWrite<'_> {
        fn drop(&mut self) {
            self.0.state().flushing = false;
        }
    }
    let mid_write = DroppedMidWrite(&shared);
    let mut writer = shared.writer.lock().await;
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.state();
            if state.outgoing.is_empty() {
                state.flushing = false;
                drop(state);
                std::mem::forget(mid_write);
                return;
            }
            std::mem::swap(&mut batch, &mut state.outgoing);
        }
        if let Err(error) = writer.write_all(&batch).await {
            shared.break_with(&format!("write failed: {error}"));
            let mut state = shared.state();
            state.outgoing.clear();
            state.flushing = false;
            drop(state);
            std::mem::forget(mid_write);
            return;
        }
        metrics::histogram!("amqp_direct_write_bytes").record(batch.len() as f64);
        batch.clear();
    }
}

/// Reads the broker's frames until the connection ends: confirms, returns, heartbeats and
/// closes. Sends a heartbeat every half of the negotiated interval. When told to stop (or
/// its publisher is dropped) it sends `connection.close` and waits for the answer.
async fn read_until_closed(
    shared: Arc<Shared>,
    mut read: OwnedReadHalf,
    mut inbox: Vec<u8>,
    heartbeat: u16,
    mut stop: watch::Receiver<bool>,
) {
    // 0: heartbeats off (`?heartbeat=0`), so silence is no sign of a dead broker.
    let heartbeat = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
    let mut beat = tokio::time::interval(heartbeat.map_or(Duration::from_secs(3600), |h| h / 2));
    let mut last_heard = tokio::time::Instant::now();
    let mut closing_since: Option<tokio::time::Instant> = None;
    let reason = loop {
        loop {
            match next_frame(&mut inbox) {
                Ok(Some(frame)) => {
                    if let Some(reason) = handle(&shared, frame) {
                        // The broker closed the connection or answered our close.
                        shared.break_with(&reason);
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    shared.break_with(&error);
                    return;
                }
            }
        }
        let close_deadline = async {
            match closing_since {
                Some(since) => tokio::time::sleep_until(since + CLOSE_TIMEOUT).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = read.read_buf(&mut inbox) => match read {
                Ok(0) => break "the broker closed the connection".to_owned(),
                Ok(_) => last_heard = tokio::time::Instant::now(),
                Err(error) => break format!("read failed: {error}"),
            },
            _ = beat.tick(), if heartbeat.is_some() => {
                if last_heard.elapsed() > heartbeat.unwrap_or_default() * 2 {
                    break "no heartbeat from the broker".to_owned();
                }
                shared.send(&AMQPFrame::Heartbeat, "heartbeat could not be encoded");
            }
            _ = stop.wait_for(|stop| *stop), if closing_since.is_none() => {
                closing_since = Some(tokio::time::Instant::now());
                let close = AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                        reply_code: 200,
                        reply_text: "shutting down".into(),
                        class_id: 0,
                        method_id: 0,
                    })),
                );
                shared.send(&close, "closed by this service");
            }
            _ = close_deadline => break "the broker did not answer our close".to_owned(),
        }
    };
    shared.break_with(&reason);
}

/// Acts on one frame; `Some(reason)` when the connection is over.
fn handle(shared: &Arc<Shared>, frame: AMQPFrame) -> Option<String> {
    use basic::AMQPMethod as Basic;
    match frame {
        AMQPFrame::Method(_, AMQPClass::Basic(Basic::Ack(ack))) => {
            shared.settle(ack.delivery_tag, ack.multiple, true);
        }
        AMQPFrame::Method(_, AMQPClass::Basic(Basic::Nack(nack))) => {
            shared.settle(nack.delivery_tag, nack.multiple, false);
            shared.break_with("the broker nacked a publish");
        }
        // A return comes before its confirm; the header that follows names the message.
        AMQPFrame::Method(_, AMQPClass::Basic(Basic::Return(_))) | AMQPFrame::Body(..) => {}
        AMQPFrame::Header(_, header) => {
            if let Some(id) = header.properties.message_id() {
                shared.state().returned.insert(id.clone());
            }
        }
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
            let close_ok = AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            );
            shared.send(&close_ok, "channel closed");
            shared.break_with(&format!(
                "the broker closed the channel: {} {}",
                close.reply_code, close.reply_text
            ));
        }
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
            let close_ok = AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
            shared.send(&close_ok, "connection closed");
            return Some(format!(
                "the broker closed the connection: {} {}",
                close.reply_code, close.reply_text
            ));
        }
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
            return Some("closed by this service".to_owned());
        }
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked))) => {
            tracing::warn!(reason = %blocked.reason, "the broker blocked publishing (resource alarm)");
        }
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {
            tracing::info!("the broker unblocked publishing");
        }
        AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => {}
        other => tracing::debug!(frame = %other, "ignored a frame from the broker"),
    }
    None
}

/// What the handshake agreed.
struct Tuned {
    frame_max: u32,
    heartbeat: u16,
}

/// Protocol header, start/start-ok (PLAIN), tune/tune-ok, open; then channel 1 and
/// confirm mode.
async fn handshake(
    uri: &AMQPUri,
    connection_name: &str,
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    inbox: &mut Vec<u8>,
) -> Result<Tuned, ConnectError> {
    use connection::AMQPMethod as Connection;
    write.write_all(b"AMQP\x00\x00\x09\x01").await?;
    match expect_method(read, inbox).await? {
        AMQPClass::Connection(Connection::Start(_)) => {}
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    }
    let user = &uri.authority.userinfo;
    let start_ok = connection::StartOk {
        client_properties: client_properties(connection_name),
        mechanism: "PLAIN".into(),
        response: format!("\0{}\0{}", user.username, user.password).into(),
        locale: "en_US".into(),
    };
    write_method(
        write,
        0,
        AMQPClass::Connection(Connection::StartOk(start_ok)),
    )
    .await?;
    let tune = match expect_method(read, inbox).await? {
        AMQPClass::Connection(Connection::Tune(tune)) => tune,
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    };
    let negotiate = |ours: Option<u32>, theirs: u32| match (ours, theirs) {
        (Some(ours), 0) => ours,
        (Some(ours), theirs) => ours.min(theirs),
        (None, theirs) => theirs,
    };
    // 0 is "no limit" from the broker; RabbitMQ's default is 128 KiB.
    let frame_max = match negotiate(uri.query.frame_max, tune.frame_max) {
        0 => 131_072,
        agreed => agreed.max(4096),
    };
    let heartbeat = negotiate(
        uri.query.heartbeat.map(u32::from),
        u32::from(tune.heartbeat),
    ) as u16;
    let tune_ok = connection::TuneOk {
        channel_max: 1,
        frame_max,
        heartbeat,
    };
    write_method(write, 0, AMQPClass::Connection(Connection::TuneOk(tune_ok))).await?;
    let open = connection::Open {
        virtual_host: uri.vhost.as_str().into(),
    };
    write_method(write, 0, AMQPClass::Connection(Connection::Open(open))).await?;
    match expect_method(read, inbox).await? {
        AMQPClass::Connection(Connection::OpenOk(_)) => {}
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    }
    let open_channel = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    write_method(write, CHANNEL, open_channel).await?;
    match expect_method(read, inbox).await? {
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    }
    let select = confirm::Select { nowait: false };
    write_method(
        write,
        CHANNEL,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(select)),
    )
    .await?;
    match expect_method(read, inbox).await? {
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    }
    Ok(Tuned {
        frame_max,
        heartbeat,
    })
}

fn client_properties(connection_name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(connection_name)),
    );
    properties.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("replicate-pipeline direct publisher")),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}

/// Reads until a method frame arrives (skipping heartbeats) and returns it; a
/// `connection.close` is the broker refusing (bad credentials, unknown vhost).
async fn expect_method(
    read: &mut OwnedReadHalf,
    inbox: &mut Vec<u8>,
) -> Result<AMQPClass, ConnectError> {
    loop {
        match next_frame(inbox).map_err(ConnectError::Protocol)? {
            Some(AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                return Err(ConnectError::Refused(format!(
                    "{} {}",
                    c.reply_code, c.reply_text
                )));
            }
            Some(AMQPFrame::Method(_, method)) => return Ok(method),
            Some(AMQPFrame::Heartbeat) => continue,
            Some(other) => return Err(ConnectError::Protocol(other.to_string())),
            None => {}
        }
        if read.read_buf(inbox).await? == 0 {
            return Err(ConnectError::Refused(
                "the broker closed the connection".to_owned(),
            ));
        }
    }
}

async fn write_method(
    write: &mut OwnedWriteHalf,
    channel: u16,
    method: AMQPClass,
) -> Result<(), ConnectError> {
    let bytes = encode(&AMQPFrame::Method(channel, method))
        .map_err(|error| ConnectError::Protocol(error.to_string()))?;
    write.write_all(&bytes).await?;
    Ok(())
}

/// Takes one whole frame off the front of `inbox`, if one is there.
fn next_frame(inbox: &mut Vec<u8>) -> Result<Option<AMQPFrame>, String> {
    if inbox.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([inbox[3], inbox[4], inbox[5], inbox[6]]) as usize;
    let whole = 7 + size + 1;
    if inbox.len() < whole {
        return Ok(None);
    }
    let frame = parse_frame(&inbox[..whole])
        .map(|(_, frame)| frame)
        .map_err(|error| format!("cannot parse a frame from the broker: {error}"))?;
    inbox.drain(..whole);
    Ok(Some(frame))
}

fn encode(frame: &AMQPFrame) -> Result<Vec<u8>, amq_protocol::frame::GenError> {
    encode_onto(Vec::new(), frame)
}

/// `bytes` with `frame` appended.
fn encode_onto(
    bytes: Vec<u8>,
    frame: &AMQPFrame,
) -> Result<Vec<u8>, amq_protocol::frame::GenError> {
    Ok(gen_frame(frame)(WriteContext::from(bytes))?.write)
}

/// `basic.publish`, its content header and the body in frames of at most `max_chunk`.
fn encode_publish(message: Outgoing<'_>, max_chunk: usize) -> Result<Vec<u8>, PublishError> {
    let failed = |error: amq_protocol::frame::GenError| {
        PublishError::Amqp(std::io::Error::other(error.to_string()).into())
    };
    let publish = basic::Publish {
        exchange: message.exchange.into(),
        routing_key: message.routing_key.into(),
        mandatory: message.mandatory,
        immediate: false,
    };
    // One buffer for the whole publish: the frames' headers and ends come to a few
    // hundred bytes beside the body.
    let bytes = Vec::with_capacity(message.body.len() + 512);
    let bytes = encode_onto(
        bytes,
        &AMQPFrame::Method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
        ),
    )
    .map_err(failed)?;
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: message.body.len() as u64,
        properties: message.properties,
    };
    let mut bytes = encode_onto(bytes, &AMQPFrame::Header(CHANNEL, header)).map_err(failed)?;
    for chunk in message.body.chunks(max_chunk.max(1)) {
        bytes.push(FRAME_BODY);
        bytes.extend_from_slice(&CHANNEL.to_be_bytes());
        bytes.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        bytes.extend_from_slice(chunk);
        bytes.push(FRAME_END);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;

    use super::*;

    fn outgoing(body: &[u8]) -> Outgoing<'_> {
        Outgoing {
            exchange: "",
            routing_key: "replicate.webhooks",
            body,
            properties: BasicProperties::default().with_message_id("msg_1".into()),
            mandatory: true,
        }
    }

    #[test]
    fn a_publish_parses_back_as_method_header_and_body_frames() {
        let body = vec![7u8; 10_000];
        let mut inbox = encode_publish(outgoing(&body), 4096 - FRAME_OVERHEAD).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = next_frame(&mut inbox).unwrap() {
            frames.push(frame);
        }
        assert!(inbox.is_empty());
        match &frames[0] {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(publish))) => {
                assert_eq!(publish.routing_key.as_str(), "replicate.webhooks");
                assert!(publish.mandatory);
            }
            other => panic!("not a publish: {other:?}"),
        }
        match &frames[1] {
            AMQPFrame::Header(1, header) => {
                assert_eq!(header.body_size, 10_000);
                assert_eq!(
                    header.properties.message_id().as_ref().unwrap().as_str(),
                    "msg_1"
                );
            }
            other => panic!("not a header: {other:?}"),
        }
        let bodies: Vec<u8> = frames[2..]
            .iter()
            .flat_map(|frame| match frame {
                AMQPFrame::Body(1, chunk) => {
                    assert!(chunk.len() <= 4096 - FRAME_OVERHEAD);
                    chunk.clone()
                }
                other => panic!("not a body: {other:?}"),
            })
            .collect();
        assert_eq!(frames.len(), 2 + 3, "10,000 bytes in chunks of 4,088");
        assert_eq!(bodies, body);
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let mut whole = encode_publish(outgoing(b"{}"), 4088).unwrap();
        let mut inbox = whole.drain(..5).collect::<Vec<u8>>();
        assert!(next_frame(&mut inbox).unwrap().is_none());
        assert_eq!(inbox.len(), 5, "nothing consumed");
    }
}
