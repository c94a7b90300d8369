//! Transactions whose `BEGIN` goes out with their first statement and whose `COMMIT` goes
//! out with their last: two round trips fewer per transaction than diesel-async's
//! `transaction`, which waits for each of them on its own.
//!
//! At 500 webhooks/s `BEGIN` and `COMMIT` were 23 % of the statements PostgreSQL answered
//! (17,458 of each in one 60 s run, `docs/benchmarks.md`); each is a round trip that wakes
//! a backend and then the service, and waits for a core on a busy machine.
//!
//! diesel-async pipelines statements sent through a shared reference to the connection:
//! they go out in the order they are first polled and their answers come back in that
//! order, each in its own extended-protocol exchange (its own `Sync`). A statement not yet
//! prepared on the connection holds diesel-async's statement cache while it is prepared,
//! and the one polled after it waits for the cache, so it still goes out second. Here the
//! pair is polled with `futures_util::future::join`, which polls its first future first.
//! So:
//!
//! - `BEGIN` is polled before the first statement: the statement runs inside the
//!   transaction. A failing first statement is followed by a `ROLLBACK`.
//! - `COMMIT` is polled after the last statement. If the last statement fails, PostgreSQL
//!   answers the `COMMIT` of the aborted transaction with a rollback, so nothing of the
//!   transaction is kept and the statement's error is returned.
//!
//! A transaction dropped before it ended (an error returned early, a cancelled future)
//! must not go back to the pool inside an open transaction. diesel-async's transaction
//! manager does not know about this one, so [`Pipelined::open`] marks the connection's
//! transaction manager as in error until the transaction has ended: a pool discards such a
//! connection at its next checkout, and PostgreSQL rolls back what it held.

use diesel::QueryResult;
use diesel::connection::TransactionManagerStatus;
use diesel_async::{AnsiTransactionManager, RunQueryDsl, TransactionManager};
use futures_util::future::{BoxFuture, join};

use crate::db::statement::statement;
use crate::db::{Connection, DbError};

/// One statement of a pipelined transaction, run through a shared reference to the
/// connection: `|conn| async move { query.load(&mut { conn }).await }.boxed()`.
pub type Step<'a, T> = BoxFuture<'a, QueryResult<T>>;

/// A transaction in progress (see the module's docs).
pub struct Pipelined<'c> {
    conn: &'c mut Connection,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing sent yet.
    Unsent,
    /// `BEGIN` sent; not ended, or its end is not known.
    Open,
    /// Committed or rolled back.
    Ended,
}

impl<'c> Pipelined<'c> {
    /// Starts a transaction on `conn` (which must not be in one); nothing is sent until its
    /// first statement.
    pub fn open(conn: &'c mut Connection) -> Self {
        debug_assert!(
            matches!(status(conn).transaction_depth(), Ok(None)),
            "a pipelined transaction inside another transaction"
        );
        status(conn).set_in_error();
        Self {
            conn,
            state: State::Unsent,
        }
    }

    /// Runs one statement of the transaction; the first goes out together with `BEGIN`.
    /// A statement that fails rolls the transaction back and returns its error.
    pub async fn run<'s, T: Send>(
        &'s mut self,
        step: impl FnOnce(&'s Connection) -> Step<'s, T>,
    ) -> Result<T, DbError> {
        let conn: &'s Connection = self.conn;
        let result = match self.state {
            State::Open => step(conn).await,
            State::Unsent => {
                self.state = State::Open;
                let (begun, result) = join(control(conn, "BEGIN"), step(conn)).await;
                begun?;
                result
            }
            State::Ended => return Err(DbError::Query(diesel::result::Error::NotInTransaction)),
        };
        match result {
            Ok(value) => Ok(value),
            Err(err) => {
                // The statement's error is the one to report; a ROLLBACK that fails too
                // leaves the transaction open here, and the pool replaces the connection.
                if control(conn, "ROLLBACK").await.is_ok() {
                    self.state = State::Ended;
                }
                Err(err.into())
            }
        }
    }

    /// Runs the last statement with `COMMIT` right behind it: committed when the statement
    /// succeeded, rolled back when it failed (its error is returned). A transaction that
    /// has not begun runs the statement on its own: a single statement is atomic.
    pub async fn commit_with<'s, T: Send>(
        &'s mut self,
        step: impl FnOnce(&'s Connection) -> Step<'s, T>,
    ) -> Result<T, DbError> {
        let conn: &'s Connection = self.conn;
        let result = match self.state {
            State::Unsent => step(conn).await,
            State::Open => {
                let (result, committed) = join(step(conn), control(conn, "COMMIT")).await;
                // A COMMIT that failed may leave the outcome unknown (a lost connection):
                // the transaction stays open here, and the pool replaces the connection.
                committed?;
                result
            }
            State::Ended => return Err(DbError::Query(diesel::result::Error::NotInTransaction)),
        };
        self.state = State::Ended;
        Ok(result?)
    }

    /// Ends the transaction without keeping anything of it.
    pub async fn rollback(&mut self) -> Result<(), DbError> {
        if self.state == State::Open {
            control(self.conn, "ROLLBACK").await?;
        }
        self.state = State::Ended;
        Ok(())
    }
}

impl Drop for Pipelined<'_> {
    /// A connection whose transaction ended (or never began) may go back to the pool; one
    /// still open stays marked, so that the pool discards it.
    fn drop(&mut self) {
        if self.state != State::Open {
            *status(self.conn) = TransactionManagerStatus::default();
        }
    }
}

/// `BEGIN`, `COMMIT` or `ROLLBACK`, through a shared reference so that it can be
/// pipelined with a statement.
async fn control(conn: &Connection, sql: &'static str) -> QueryResult<usize> {
    statement(sql).execute(&mut { conn }).await
}

/// The connection's transaction manager status, as diesel-async's own transactions set it.
fn status(conn: &mut Connection) -> &mut TransactionManagerStatus {
    <AnsiTransactionManager as TransactionManager<Connection>>::transaction_manager_status_mut(conn)
}
