//! The web app's own part that the jobs API does not cover: accounts and purchased credits.
//! The demo and load runs create their users here, as a product's sign-up would.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::schema::{credit_transactions, users};
use shared::db::{self, DbError, Pool};

/// Creates the user with `credits` unless it exists.
pub async fn ensure_user(pool: &Pool, user_id: &str, credits: i32) -> Result<(), DbError> {
    let mut conn = db::connection(pool).await?;
    diesel::insert_into(users::table)
        .values((users::id.eq(user_id), users::credits.eq(credits)))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Adds `credits` to a user's balance (a purchase), with its credit transaction.
pub async fn top_up(pool: &Pool, user_id: &str, credits: i32) -> Result<(), DbError> {
    let mut conn = db::connection(pool).await?;
    let reference = format!("topup-{}", crate::prediction::new_id());
    conn.transaction(async |conn| {
        diesel::update(users::table.find(user_id))
            .set(users::credits.eq(users::credits + credits))
            .execute(conn)
            .await?;
        diesel::insert_into(credit_transactions::table)
            .values((
                credit_transactions::user_id.eq(user_id),
                credit_transactions::amount.eq(credits),
                credit_transactions::kind.eq("TOPUP"),
                credit_transactions::job_id.eq(&reference),
            ))
            .execute(conn)
            .await?;
        Ok::<_, DbError>(())
    })
    .await
}
