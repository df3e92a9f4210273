//! Raw SQL statements that PostgreSQL prepares once per connection.
//!
//! diesel's `sql_query` is re-sent, re-parsed and re-planned on every call. A statement here has fixed
//! text and a static query id, so diesel-async keeps it in its per-connection statement cache: after the
//! first call it costs one round trip and no planning. The text marks each bind with `?`, filled in the
//! order of the fields.

/// Declares a prepared statement type: `prepared!(Name { field: RustType => SqlType, … } = "SQL with ?");`
macro_rules! prepared {
    ($(#[$meta:meta])* $name:ident { $($field:ident : $rust:ty => $sql:ty),* $(,)? } = $text:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $(pub $field: $rust),*
        }

        impl diesel::query_builder::QueryId for $name {
            type QueryId = $name;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl diesel::query_builder::Query for $name {
            type SqlType = diesel::sql_types::Untyped;
        }

        impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for $name {
            fn walk_ast<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
            ) -> diesel::QueryResult<()> {
                let mut pieces = $text.split('?');
                if let Some(first) = pieces.next() {
                    out.push_sql(first);
                }
                $(
                    out.push_bind_param::<$sql, $rust>(&self.$field)?;
                    if let Some(piece) = pieces.next() {
                        out.push_sql(piece);
                    }
                )*
                Ok(())
            }
        }
    };
}

pub(crate) use prepared;

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Array, BigInt};

    prepared!(
        /// A statement for the test below.
        Example { a: i64 => BigInt, b: i64 => BigInt, ids: Vec<i64> => Array<BigInt> } = "SELECT ? AS a WHERE ? = ANY(?)"
    );

    #[test]
    fn binds_go_where_the_marks_are() {
        let query = Example {
            a: 1,
            b: 2,
            ids: vec![2],
        };
        let sql = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
        assert!(
            sql.starts_with("SELECT $1 AS a WHERE $2 = ANY($3)"),
            "{sql}"
        );
    }
}
