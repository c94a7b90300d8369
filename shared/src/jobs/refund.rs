//! Giving credits back when a job fails or is cancelled: exactly once per job, in the
//! transaction that changes its status.

use crate::db::schema::credit_transactions;
use crate::db::{Connection, DbError};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

pub const REFUND: &str = "REFUND";

/// Records the refund of `amount` credits for Replicate job `job_id`; returns the amount to
/// add to the user's balance: `amount` the first time, 0 if this job was refunded before
/// (`unique (job_id, kind)` makes a second refund impossible, whatever arrives twice).
pub async fn record(
    conn: &mut Connection,
    user_id: &str,
    job_id: &str,
    amount: i32,
) -> Result<i32, DbError> {
    if amount <= 0 {
        return Ok(0);
    }
    let inserted = diesel::insert_into(credit_transactions::table)
        .values((
            credit_transactions::user_id.eq(user_id),
            credit_transactions::amount.eq(amount),
            credit_transactions::kind.eq(REFUND),
            credit_transactions::job_id.eq(job_id),
        ))
        .on_conflict((credit_transactions::job_id, credit_transactions::kind))
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(if inserted == 1 { amount } else { 0 })
}
