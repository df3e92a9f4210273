//! User ids on the wire: the GraphQL `ID` holds a positive 64-bit integer in decimal.

use async_graphql::ID;

use crate::error::AppError;

/// The user id an `ID` argument carries; anything else is `BAD_USER_INPUT` naming the argument.
pub fn parse_user_id(id: &ID, argument: &str) -> Result<i64, AppError> {
    id.as_str()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            AppError::bad_input(format!(
                "{argument}: {:?} is not a user id (a positive integer)",
                id.as_str()
            ))
        })
}

/// Parses a list argument, refusing it whole at the first bad id.
pub fn parse_user_ids(ids: &[ID], argument: &str) -> Result<Vec<i64>, AppError> {
    crate::graph::check_batch_len(ids.len())?;
    ids.iter().map(|id| parse_user_id(id, argument)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_integers_are_user_ids() {
        assert_eq!(parse_user_id(&ID::from("42"), "id").ok(), Some(42));
        for bad in ["0", "-1", "abc", "", "1.5", "99999999999999999999"] {
            assert!(parse_user_id(&ID::from(bad), "id").is_err(), "{bad}");
        }
    }
}
