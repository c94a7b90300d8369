//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! diesel's `sql_query` marks itself unsafe to cache, so diesel-async prepares it anew on
//! every run: one round trip more (Parse, Describe, Close), and PostgreSQL parses and plans
//! the text every time. The worker's set-based batch statements are long joins over
//! `unnest(…)`, run several times per batch; planning them again each time was a visible
//! share of the machine under load (`docs/benchmarks.md`). A [`Statement`] is the same
//! constant text and typed binds, cached by its text like any query diesel builds:
//! prepared on a connection's first use, then only bound and executed.
//!
//! ```ignore
//! statement("UPDATE users SET credits = credits + $2 WHERE id = $1")
//!     .bind::<Text, _>(user_id)
//!     .bind::<Integer, _>(amount)
//!     .execute(conn)
//! ```
//!
//! Binds are numbered `$1`, `$2`, … in the order they are bound, and each one's first use
//! in the text must come after the previous one's first use (later uses may be anywhere).

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error;
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A constant SQL text to bind values to (see the module's docs).
pub fn statement(sql: &'static str) -> Statement<NoBinds> {
    Statement {
        sql,
        binds: NoBinds,
    }
}

/// A SQL text with its binds; run it with diesel-async's `RunQueryDsl` (`execute`, `load`
/// into a `QueryableByName` row).
#[must_use = "a statement runs only when executed or loaded"]
pub struct Statement<B> {
    sql: &'static str,
    binds: B,
}

impl<B: Binds> Statement<B> {
    /// Binds the next parameter (`$1` first) as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Statement<Bind<B, ST, V>>
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg>,
    {
        Statement {
            sql: self.sql,
            binds: Bind {
                earlier: self.binds,
                value,
                sql_type: PhantomData,
            },
        }
    }
}

/// The binds of a statement without any.
pub struct NoBinds;

/// One bound value after the `earlier` ones.
pub struct Bind<Earlier, ST, V> {
    earlier: Earlier,
    value: V,
    sql_type: PhantomData<ST>,
}

/// A statement's bound values, written into its text in order.
pub trait Binds {
    const COUNT: usize;

    /// Writes the text from where the earlier binds left off up to each bind's first
    /// placeholder (`starts`), then the placeholder through diesel, so that diesel numbers
    /// and collects the binds as for any query it builds. Returns where the text goes on.
    fn walk<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, Pg>,
        sql: &str,
        starts: &[usize],
    ) -> QueryResult<usize>;
}

impl Binds for NoBinds {
    const COUNT: usize = 0;

    fn walk<'b>(&'b self, _: &mut AstPass<'_, 'b, Pg>, _: &str, _: &[usize]) -> QueryResult<usize> {
        Ok(0)
    }
}

impl<Earlier, ST, V> Binds for Bind<Earlier, ST, V>
where
    Earlier: Binds,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    const COUNT: usize = Earlier::COUNT + 1;

    fn walk<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, Pg>,
        sql: &str,
        starts: &[usize],
    ) -> QueryResult<usize> {
        let from = self.earlier.walk(out, sql, starts)?;
        let at = starts[Earlier::COUNT];
        out.push_sql(&sql[from..at]);
        out.push_bind_param::<ST, V>(&self.value)?;
        Ok(at + placeholder(Self::COUNT).len())
    }
}

fn placeholder(number: usize) -> String {
    format!("${number}")
}

/// Where `$1` … `$count` first appear in `sql`, each after the one before.
fn first_placeholders(sql: &str, count: usize) -> QueryResult<Vec<usize>> {
    let mut starts = Vec::with_capacity(count);
    let mut after_previous = 0;
    for number in 1..=count {
        let placeholder = placeholder(number);
        let first = sql
            .match_indices(&placeholder)
            .map(|(at, _)| at)
            .find(|&at| !sql[at + placeholder.len()..].starts_with(|c: char| c.is_ascii_digit()));
        match first {
            Some(at) if at >= after_previous => {
                starts.push(at);
                after_previous = at + placeholder.len();
            }
            Some(_) => {
                return Err(Error::QueryBuilderError(
                    format!("{placeholder} is first used before ${}: {sql}", number - 1).into(),
                ));
            }
            None => {
                return Err(Error::QueryBuilderError(
                    format!("{count} values are bound, but {placeholder} is not in: {sql}").into(),
                ));
            }
        }
    }
    Ok(starts)
}

impl<B: Binds> QueryFragment<Pg> for Statement<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let starts = first_placeholders(self.sql, B::COUNT)?;
        let end = self.binds.walk(&mut out, self.sql, &starts)?;
        out.push_sql(&self.sql[end..]);
        Ok(())
    }
}

/// Cached by its text (`HAS_STATIC_QUERY_ID` is false), which is constant.
impl<B> QueryId for Statement<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Statement<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_in_order_and_not_inside_longer_numbers() {
        let sql = "SELECT $1, $10, $2 WHERE x = $1";
        assert_eq!(first_placeholders(sql, 2).unwrap(), vec![7, 16]);
    }

    #[test]
    fn a_placeholder_used_first_out_of_order_or_missing_is_refused() {
        assert!(first_placeholders("SELECT $2, $1", 2).is_err());
        assert!(first_placeholders("SELECT $1", 2).is_err());
        assert!(first_placeholders("SELECT $10", 1).is_err());
    }
}
