//! Hand-written SQL with bound values, for the statements of the write path
//! that SeaORM's builders cannot express in one round trip (several
//! statements in one string on SQLite, data-modifying CTEs on PostgreSQL).
//! Every value is bound, never spliced into the text.

use sea_orm::{DbBackend, Statement, Value};

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
}
