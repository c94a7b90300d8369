//! One connection's ordered stream of events: `hello`, then what it missed since `since`
//! read from the event log, then live events, each once and in increasing `seq`.
//!
//! The connection subscribes before it reads the log, and drops live events whose `seq`
//! it already sent, so nothing falls between the replay and the live stream. A live event
//! that skips ahead (one was lost or is late) is preceded by the missing ones from the log.

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::schema::{job_events, users};
use shared::db::{self, DbError, Pool};
use shared::events::Event;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::push::frame::{Frame, Push};
use crate::push::sessions::{ConnectionLimit, Registration, Sessions};

/// Why a connection's feed could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Limit(#[from] ConnectionLimit),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for OpenError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

/// Most events read from the log at once: a client far behind is caught up page by page,
/// so memory stays bounded however long its log is.
pub const REPLAY_PAGE: i64 = 500;

pub struct Feed {
    registration: Registration,
    pool: Pool,
    last_sent: i64,
    /// The last read from the log filled a page: more may follow.
    more: bool,
}

/// What a new connection sends first.
pub struct Opening {
    pub hello: Frame,
    pub replay: Vec<Frame>,
}

impl Feed {
    /// Subscribes `user_id`, then reads the log: `hello` with the latest `seq`, and with
    /// `since` every event after it.
    pub async fn open(
        sessions: &Arc<Sessions>,
        pool: &Pool,
        user_id: &str,
        since: Option<i64>,
    ) -> Result<(Self, Opening), OpenError> {
        let registration = sessions.register(user_id).await?;
        let mut conn = db::connection(pool).await?;
        let latest: i64 = users::table
            .find(user_id)
            .select(users::event_seq)
            .first(&mut conn)
            .await
            .optional()?
            .unwrap_or(0);
        let hello = Frame {
            seq: None,
            json: Utf8Bytes::from(
                serde_json::to_string(&Event::hello(user_id, latest)).expect("serialises"),
            ),
        };
        let mut feed = Self {
            registration,
            pool: pool.clone(),
            last_sent: latest,
            more: false,
        };
        let replay = match since {
            Some(since) if since < latest => {
                feed.last_sent = since.max(0);
                feed.catch_up(&mut conn, None).await?
            }
            _ => Vec::new(),
        };
        metrics::counter!("notifier_events_replayed_total").increment(replay.len() as u64);
        Ok((feed, Opening { hello, replay }))
    }

    pub fn user_id(&self) -> &str {
        &self.registration.user_id
    }

    /// Whether the log holds more for this client than has been read: the caller sends
    /// [`Feed::next_page`] before taking live pushes again.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// The next page of the log after what was sent.
    pub async fn next_page(&mut self) -> Result<Vec<Frame>, DbError> {
        Box::pin(self.read_log(None)).await
    }

    /// Waits for the next push (cancel-safe: use it in `select!`); `None` once
    /// unregistered.
    pub async fn recv(&mut self) -> Option<Push> {
        self.registration.rx.recv().await
    }

    /// Signalled when this connection fell too far behind and must close.
    pub fn too_slow_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.registration.too_slow.clone()
    }

    /// Turns a push into the frames to send, in order, without duplicates.
    ///
    /// The log is read only when the push skips ahead or asks for a resync; that path is
    /// boxed, so that each connection's task stays small while it waits.
    pub async fn accept(&mut self, push: Push) -> Result<Vec<Frame>, DbError> {
        let Push::Event(frame) = push else {
            return Box::pin(self.read_log(None)).await;
        };
        let Some(seq) = frame.seq else {
            return Ok(vec![Frame::clone(&frame)]);
        };
        if seq <= self.last_sent {
            return Ok(Vec::new());
        }
        let mut frames = if seq == self.last_sent + 1 {
            Vec::with_capacity(1)
        } else {
            // Ahead of what we sent: fetch the gap from the log first.
            Box::pin(self.read_log(Some(seq - 1))).await?
        };
        if seq == self.last_sent + 1 {
            self.last_sent = seq;
            metrics::counter!("notifier_events_delivered_total").increment(1);
            frames.push(Frame::clone(&frame));
        }
        Ok(frames)
    }

    /// Events after `last_sent` (up to `until`) from the log: at most a page.
    async fn read_log(&mut self, until: Option<i64>) -> Result<Vec<Frame>, DbError> {
        let mut conn = db::connection(&self.pool).await?;
        let frames = self.catch_up(&mut conn, until).await?;
        metrics::counter!("notifier_events_replayed_total").increment(frames.len() as u64);
        Ok(frames)
    }

    /// Events after `last_sent` (up to `until` when given) from the log, in order, at most
    /// a page; [`Feed::has_more`] tells whether to ask for the next.
    async fn catch_up(
        &mut self,
        conn: &mut db::Connection,
        until: Option<i64>,
    ) -> Result<Vec<Frame>, DbError> {
        let mut query = job_events::table
            .filter(job_events::user_id.eq(self.user_id()))
            .filter(job_events::seq.gt(self.last_sent))
            .order(job_events::seq)
            .limit(REPLAY_PAGE)
            .select((job_events::seq, job_events::payload))
            .into_boxed();
        if let Some(until) = until {
            query = query.filter(job_events::seq.le(until));
        }
        let rows: Vec<(i64, serde_json::Value)> = query.load(conn).await?;
        self.more = rows.len() as i64 == REPLAY_PAGE;
        let mut frames = Vec::with_capacity(rows.len());
        for (seq, payload) in rows {
            if seq != self.last_sent + 1 {
                break; // a hole in the log cannot be: stop rather than skip
            }
            self.last_sent = seq;
            frames.push(Frame {
                seq: Some(seq),
                json: Utf8Bytes::from(payload.to_string()),
            });
        }
        Ok(frames)
    }
}
