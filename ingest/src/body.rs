//! Reading a webhook's body before it can be verified, with bounded memory: every request
//! may buffer up to [`SMALL_BODY`] from a pool of its own, bytes beyond that come from a
//! shared budget for large bodies (training logs), and the whole body must arrive within
//! a read timeout. Stalled, slow or oversized unauthenticated uploads are cut off, and
//! however many there are they cannot take the memory a normal webhook needs.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What every webhook may buffer from the small pool: Replicate's image webhooks are a
/// few KiB; only training logs are larger.
pub const SMALL_BODY: usize = 64 * 1024;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("ingest is buffering as much as it may right now; retry later")]
    Busy,
    #[error("cannot read body: {0}")]
    Unreadable(String),
}

/// The memory bodies may take, shared by all requests.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// Up to [`SMALL_BODY`] for each request being read.
    small: Arc<Semaphore>,
    /// Bytes beyond [`SMALL_BODY`], for all requests together.
    large: Arc<Semaphore>,
    timeout: Duration,
}

/// Memory held for one request's body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _small: OwnedSemaphorePermit,
    large: Option<OwnedSemaphorePermit>,
    large_bytes: usize,
}

impl BodyBudget {
    /// `small_slots` requests may be read at once with up to [`SMALL_BODY`] each;
    /// `large_bytes` is shared by the bytes beyond that.
    pub fn new(small_slots: usize, large_bytes: usize, timeout: Duration) -> Self {
        Self {
            small: Arc::new(Semaphore::new(small_slots)),
            large: Arc::new(Semaphore::new(large_bytes)),
            timeout,
        }
    }

    /// Large-body bytes not taken right now (for tests and metrics).
    pub fn large_available(&self) -> usize {
        self.large.available_permits()
    }

    /// Reads the body, at most `limit` bytes (a `Content-Length` above it is refused
    /// before anything is read).
    pub async fn read(
        &self,
        mut payload: web::Payload,
        announced: Option<usize>,
        limit: usize,
    ) -> Result<(web::BytesMut, Reservation), BodyError> {
        if announced.is_some_and(|length| length > limit) {
            return Err(BodyError::TooLarge { limit });
        }
        let small = self
            .small
            .clone()
            .try_acquire_owned()
            .map_err(|_| BodyError::Busy)?;
        let mut reservation = Reservation {
            _small: small,
            large: None,
            large_bytes: 0,
        };
        let expected = announced.unwrap_or(8 * 1024);
        self.cover(&mut reservation, expected)?;
        let mut body = web::BytesMut::with_capacity(expected);
        let read = async {
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|err| BodyError::Unreadable(err.to_string()))?;
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                // Reserve what the buffer will hold before it grows.
                self.cover(
                    &mut reservation,
                    (body.len() + chunk.len()).max(body.capacity()),
                )?;
                body.extend_from_slice(&chunk);
                self.cover(&mut reservation, body.capacity())?;
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| BodyError::TimedOut(self.timeout))??;
        Ok((body, reservation))
    }

    /// Makes `reservation` cover a buffer of `bytes`, taking what is beyond [`SMALL_BODY`]
    /// from the large budget without waiting.
    fn cover(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), BodyError> {
        let needed = bytes.saturating_sub(SMALL_BODY);
        if needed <= reservation.large_bytes {
            return Ok(());
        }
        let more = u32::try_from(needed - reservation.large_bytes).map_err(|_| BodyError::Busy)?;
        let permit = self
            .large
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| BodyError::Busy)?;
        match &mut reservation.large {
            Some(held) => held.merge(permit),
            None => reservation.large = Some(permit),
        }
        reservation.large_bytes = needed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_beyond_the_small_share_use_the_large_budget() {
        let budget = BodyBudget::new(2, 100_000, Duration::from_secs(1));
        let small = budget.small.clone().try_acquire_owned().unwrap();
        let mut reservation = Reservation {
            _small: small,
            large: None,
            large_bytes: 0,
        };
        budget.cover(&mut reservation, SMALL_BODY).unwrap();
        assert_eq!(budget.large_available(), 100_000, "a small body is free");
        budget.cover(&mut reservation, SMALL_BODY + 60_000).unwrap();
        assert_eq!(budget.large_available(), 40_000);
        assert!(matches!(
            budget.cover(&mut reservation, SMALL_BODY + 100_001),
            Err(BodyError::Busy)
        ));
        budget
            .cover(&mut reservation, SMALL_BODY + 100_000)
            .unwrap();
        assert_eq!(budget.large_available(), 0);
        drop(reservation);
        assert_eq!(budget.large_available(), 100_000, "given back on drop");
    }
}
