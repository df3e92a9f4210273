//! Opaque list cursors: a keyset position (follow time, other user's id), base64url-encoded.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Datelike};

use crate::{error::AppError, graph::Keyset};

/// The cursor of a list position. The version tag lets the format change without breaking old clients loudly.
pub fn encode(position: Keyset) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "v1:{}:{}",
        position.at.timestamp_micros(),
        position.user_id
    ))
}

/// The position a cursor names; anything this API did not issue is `BAD_USER_INPUT`.
pub fn decode(cursor: &str) -> Result<Keyset, AppError> {
    let bad =
        || AppError::bad_input("after: not a cursor this API issued (use a pageInfo.endCursor)");
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.split(':');
    let (Some("v1"), Some(micros), Some(user_id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    // Only instants a follow can have: those `DateTime` writes (RFC 3339 has four-digit years), all of
    // which PostgreSQL holds. chrono reaches far further, and PostgreSQL refuses such a parameter.
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .filter(|at| (1..=9999).contains(&at.year()))
        .ok_or_else(bad)?;
    let user_id = user_id.parse::<i64>().map_err(|_| bad())?;
    Ok(Keyset { at, user_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let position = Keyset {
            at: DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("valid"),
            user_id: 77,
        };
        assert_eq!(decode(&encode(position)).ok(), Some(position));
    }

    #[test]
    fn cursors_of_the_first_and_last_instants_a_date_time_writes_round_trip() {
        for micros in [-62_135_596_800_000_000, 253_402_300_799_999_999] {
            let position = Keyset {
                at: DateTime::from_timestamp_micros(micros).expect("valid"),
                user_id: 1,
            };
            assert_eq!(decode(&encode(position)).ok(), Some(position), "{micros}");
        }
    }

    #[test]
    fn foreign_cursors_are_refused() {
        for bad in [
            "",
            "abc",
            "djE6eDp5",
            &URL_SAFE_NO_PAD.encode("v2:1:2"),
            &URL_SAFE_NO_PAD.encode("v1:1:2:3"),
            // Instants chrono holds and PostgreSQL does not (the first one was found by fuzzing).
            &URL_SAFE_NO_PAD.encode("v1:-2108668032000000001:0"),
            &URL_SAFE_NO_PAD.encode("v1:-62135596800000001:1"),
            &URL_SAFE_NO_PAD.encode("v1:253402300800000000:1"),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
