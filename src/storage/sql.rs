//! Hand-written SQL with bound values, for the statements of the write path
//! that SeaORM's builders cannot express in one round trip (several
//! statements in one string on SQLite, data-modifying CTEs on PostgreSQL).
//! Every value is bound, never spliced into the text.

use sea_orm::{DbBackend, DbErr, Statement, Value};

use super::error::StorageError;

#[derive(Debug)]
pub(crate) struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub(crate) fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.backend
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Appends SQL text (never a value).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub(crate) fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            // Plain `?`: sqlx binds them in order across the statements of
            // one string (each statement takes the next values). Numbered
            // `?NNN` would not survive a second statement.
            DbBackend::Sqlite => self.text.push('?'),
            _ => {
                self.text.push('$');
                self.text.push_str(&self.values.len().to_string());
            }
        }
        self
    }

    /// Appends `(p1, p2, ...)` bound to `values`.
    pub(crate) fn bind_list<V: Into<Value>>(
        &mut self,
        values: impl IntoIterator<Item = V>,
    ) -> &mut Self {
        self.text.push('(');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(value);
        }
        self.text.push(')');
        self
    }

    pub(crate) fn into_statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

/// Several writes in one round trip: on SQLite the statements of one
/// string, on PostgreSQL the data-modifying CTEs of one statement (each sees
/// the statement's snapshot, so they must touch different rows). A write may
/// answer a row per row it changed (`RETURNING answer`): SQLite returns them
/// from its statement, PostgreSQL from the final `SELECT` over those CTEs.
#[derive(Debug)]
pub(crate) struct WriteSteps {
    sql: Sql,
    /// PostgreSQL: the final SELECT's branches.
    answers: Vec<String>,
    /// Some step is [`Self::guard_account`]'s.
    guarded: bool,
    /// PostgreSQL, several calls' writes in one statement: the member whose
    /// steps are being written (see [`Self::member`]).
    member: Option<usize>,
    /// The current member's first step is its guard.
    member_guarded: bool,
}

impl WriteSteps {
    pub(crate) fn new(backend: DbBackend) -> Self {
        Self {
            sql: Sql::new(backend),
            answers: Vec::new(),
            guarded: false,
            member: None,
            member_guarded: false,
        }
    }

    /// PostgreSQL: the steps written next are member `n`'s, one of several
    /// calls' writes in this statement. Their CTEs are named `m<n>_<name>`,
    /// their guard is their own, and every row they answer carries `n` as
    /// its first column, `m`.
    pub(crate) fn member(&mut self, n: usize) {
        debug_assert!(self.postgres(), "members are PostgreSQL CTEs");
        self.member = Some(n);
        self.member_guarded = false;
    }

    fn name(&self, name: &str) -> String {
        match self.member {
            Some(n) => format!("m{n}_{name}"),
            None => name.to_owned(),
        }
    }

    pub(crate) fn postgres(&self) -> bool {
        self.sql.backend == DbBackend::Postgres
    }

    /// PostgreSQL, a write outside a transaction whose plan was made from
    /// the account row at `version` (its `xmin`, see
    /// `Repository::load_unlocked`): the first step touches the account
    /// only if the row is still at that version and no other transaction
    /// holds it, locking it, and every later step that appends
    /// [`Self::only_if_guarded`] acts only if it did, after it (a sub-select
    /// that does not depend on the row runs once, before the step scans),
    /// so the lock order is the locked writes' (the account, then its
    /// rows). It never waits for the row: this statement commits on its
    /// own, and must not be let through by a lock released after its call's
    /// deadline dropped it. A guard that did not match leaves every step
    /// without effect, and the write runs again under the lock.
    pub(crate) fn guard_account(
        &mut self,
        account_id: i64,
        version: &str,
        now: chrono::DateTime<chrono::Utc>,
        answer: Option<&str>,
    ) {
        debug_assert!(
            self.sql.is_empty() || self.member.is_some(),
            "the guard is the first step"
        );
        self.open("guard")
            .push("UPDATE accounts SET updated_at = ")
            .bind(now)
            .push(" WHERE id = (SELECT id FROM accounts WHERE id = ")
            .bind(account_id)
            .push(" AND xmin::text = ")
            .bind(version)
            .push(" FOR UPDATE SKIP LOCKED)");
        self.close("guard", answer);
        self.guarded = true;
        self.member_guarded = true;
    }

    /// How this statement's failure is read: a guarded statement commits
    /// itself, so a connection lost during it leaves the outcome unknown,
    /// as during a COMMIT (never retried); otherwise its transaction has
    /// committed nothing yet.
    pub(crate) fn failure(&self) -> fn(DbErr) -> StorageError {
        if self.guarded {
            StorageError::from_commit
        } else {
            StorageError::from
        }
    }

    /// The condition a step appends to its `WHERE` to act only if the
    /// guard matched; nothing without a guard.
    pub(crate) fn only_if_guarded(&self) -> String {
        if self.member_guarded {
            format!(" AND EXISTS (SELECT 1 FROM {})", self.name("guard"))
        } else {
            String::new()
        }
    }

    /// Starts the next write (its CTE's `name` on PostgreSQL); write its SQL
    /// into the returned builder, then [`Self::close`] it.
    pub(crate) fn open(&mut self, name: &str) -> &mut Sql {
        let first = self.sql.is_empty();
        if self.postgres() {
            let name = self.name(name);
            self.sql
                .push(if first { "WITH " } else { ", " })
                .push(&name)
                .push(" AS (");
        } else if !first {
            self.sql.push("; ");
        }
        &mut self.sql
    }

    /// Ends the write opened as `name`; `answer` is what each row it changed
    /// answers (the same columns for every answering write), if anything.
    pub(crate) fn close(&mut self, name: &str, answer: Option<&str>) {
        match (self.postgres(), answer) {
            (true, answer) => {
                self.sql
                    .push(" RETURNING ")
                    .push(answer.unwrap_or("1"))
                    .push(")");
                if answer.is_some() {
                    let member = self.member.map(|n| format!("{n} AS m, "));
                    self.answers.push(format!(
                        "SELECT {}* FROM {}",
                        member.unwrap_or_default(),
                        self.name(name)
                    ));
                }
            }
            (false, Some(answer)) => {
                self.sql.push(" RETURNING ").push(answer);
            }
            (false, None) => {}
        }
    }

    pub(crate) fn into_statement(mut self) -> Statement {
        if self.postgres() {
            if self.answers.is_empty() {
                self.answers.push("SELECT 1 WHERE FALSE".into());
            }
            let answers = self.answers.join(" UNION ALL ");
            self.sql.push(" ").push(&answers);
        }
        self.sql.into_statement()
    }
}

/// A result row, read column by column: sqlx's through SeaORM, or the
/// direct SQLite connection's (`direct`).
pub(crate) trait ReadRow {
    fn read<T: sea_orm::TryGetable + sea_orm::sea_query::ValueType>(
        &self,
        column: &str,
    ) -> Result<T, DbErr>;
}

impl ReadRow for sea_orm::QueryResult {
    fn read<T: sea_orm::TryGetable + sea_orm::sea_query::ValueType>(
        &self,
        column: &str,
    ) -> Result<T, DbErr> {
        self.try_get("", column)
    }
}

/// One row a write step answered: its kind and the id of the row it
/// changed (see [`WriteSteps::close`]'s `answer`).
pub(crate) struct Answered {
    pub kind: String,
    pub id: i64,
}

/// The rows `member` answered (all of them for a statement of one call's
/// writes).
pub(crate) fn answered<R: ReadRow>(
    rows: &[R],
    member: Option<i32>,
) -> Result<Vec<Answered>, DbErr> {
    let mut answered = Vec::new();
    for row in rows {
        if let Some(member) = member {
            let of: i32 = row.read("m")?;
            if of != member {
                continue;
            }
        }
        answered.push(Answered {
            kind: row.read("kind")?,
            id: row.read("id")?,
        });
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_values_in_order() {
        let mut sql = Sql::new(DbBackend::Sqlite);
        sql.push("DELETE FROM t WHERE a = ")
            .bind(1_i64)
            .push(" AND b IN ")
            .bind_list(["x", "y"])
            .push("; UPDATE u SET c = ")
            .bind(2_i64);
        let statement = sql.into_statement();
        assert_eq!(
            statement.sql,
            "DELETE FROM t WHERE a = ? AND b IN (?, ?); UPDATE u SET c = ?"
        );
        assert_eq!(statement.values.map(|v| v.0.len()), Some(4));

        let mut sql = Sql::new(DbBackend::Postgres);
        sql.push("SELECT ").bind(1_i64).push(", ").bind("a");
        assert_eq!(sql.into_statement().sql, "SELECT $1, $2");
    }

    fn two_writes(backend: DbBackend) -> String {
        let mut steps = WriteSteps::new(backend);
        steps
            .open("gone")
            .push("DELETE FROM t WHERE a = ")
            .bind(1_i64);
        steps.close("gone", Some("'gone' AS kind"));
        steps.open("touched").push("UPDATE u SET b = ").bind(2_i64);
        steps.close("touched", None);
        steps.into_statement().sql
    }

    #[test]
    fn members_have_their_own_ctes_guard_and_answer_column() {
        let mut steps = WriteSteps::new(DbBackend::Postgres);
        for n in 0..2 {
            steps.member(n);
            steps.guard_account(7, "42", chrono::Utc::now(), Some("'guard' AS kind"));
            let guarded = steps.only_if_guarded();
            steps
                .open("gone")
                .push("DELETE FROM t WHERE a = 1")
                .push(&guarded);
            steps.close("gone", Some("'gone' AS kind"));
        }
        let sql = steps.into_statement().sql;
        for n in 0..2 {
            assert!(
                sql.contains(&format!("m{n}_guard AS (UPDATE accounts")),
                "{sql}"
            );
            assert!(
                sql.contains(&format!("a = 1 AND EXISTS (SELECT 1 FROM m{n}_guard)")),
                "{sql}"
            );
            assert!(
                sql.contains(&format!("SELECT {n} AS m, * FROM m{n}_gone")),
                "{sql}"
            );
        }
    }

    #[test]
    fn write_steps_are_statements_on_sqlite_and_ctes_on_postgres() {
        assert_eq!(
            two_writes(DbBackend::Sqlite),
            "DELETE FROM t WHERE a = ? RETURNING 'gone' AS kind; UPDATE u SET b = ?"
        );
        assert_eq!(
            two_writes(DbBackend::Postgres),
            "WITH gone AS (DELETE FROM t WHERE a = $1 RETURNING 'gone' AS kind), \
             touched AS (UPDATE u SET b = $2 RETURNING 1) SELECT * FROM gone"
        );
    }
}
