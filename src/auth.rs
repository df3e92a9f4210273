//! Bearer tokens: HS256 JWTs whose `sub` is the viewer's user id. Knows nothing of HTTP or GraphQL.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// Who is asking: the follower in every mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: i64,
    /// Whether the token carries `role: "admin"` (may call `upsertUser`).
    pub is_admin: bool,
}

/// The claims this service reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// The furthest a token's expiry is honoured: a longer-lived token still works, but a connection's
/// session deadline is computed from this at most (an `exp` near `i64::MAX` would overflow an instant).
pub const MAX_SESSION_SECONDS: i64 = 366 * 24 * 3_600;

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The `iss` and `aud` this service requires (and writes into the tokens it issues), when set.
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        // A token not valid yet (`nbf` in the future) is refused like an expired one.
        validation.validate_nbf = true;
        // `aud` is checked only when the service is told which audience it is.
        validation.validate_aud = false;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            issuer: None,
            audience: None,
        }
    }

    /// Requires tokens to name `issuer` (`iss`) and `audience` (`aud`) where given
    /// (`FOLLOW_JWT_ISSUER`, `FOLLOW_JWT_AUDIENCE`); tokens this service issues carry them.
    pub fn requiring(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            self.validation
                .set_required_spec_claims(&["exp", "sub", "iss"]);
        }
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            let mut required = vec!["exp", "sub", "aud"];
            if issuer.is_some() {
                required.push("iss");
            }
            self.validation.set_required_spec_claims(&required);
        }
        self.issuer = issuer.map(str::to_owned);
        self.audience = audience.map(str::to_owned);
        self
    }

    /// A token for `user_id`, valid for `ttl_seconds` from now.
    pub fn issue(&self, user_id: i64, is_admin: bool, ttl_seconds: i64) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + ttl_seconds,
            iat: Some(now),
            role: is_admin.then(|| "admin".to_owned()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The viewer a token names; a malformed, expired or forged token is `UNAUTHENTICATED`.
    pub fn verify(&self, token: &str) -> Result<Viewer, AppError> {
        self.verify_until(token).map(|(viewer, _)| viewer)
    }

    /// As [`Self::verify`], with the token's expiry (Unix seconds): a long-lived connection must end
    /// its viewer's session then.
    pub fn verify_until(&self, token: &str) -> Result<(Viewer, i64), AppError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|err| {
            AppError::Unauthenticated(match err.kind() {
                ErrorKind::ExpiredSignature => "the bearer token has expired".to_owned(),
                ErrorKind::ImmatureSignature => {
                    "the bearer token is not valid yet (its nbf is in the future)".to_owned()
                }
                ErrorKind::InvalidIssuer => {
                    "the bearer token was not issued for this service (iss)".to_owned()
                }
                ErrorKind::InvalidAudience => {
                    "the bearer token is not meant for this service (aud)".to_owned()
                }
                ErrorKind::InvalidSignature => {
                    "the bearer token's signature is not valid".to_owned()
                }
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                    "the bearer token is not a JWT".to_owned()
                }
                ErrorKind::InvalidAlgorithm => {
                    "the bearer token must be signed with HS256".to_owned()
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    format!("the bearer token has no `{claim}` claim")
                }
                _ => "the bearer token is not valid".to_owned(),
            })
        })?;
        let user_id = data
            .claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                AppError::Unauthenticated("the bearer token's sub is not a user id".into())
            })?;
        let viewer = Viewer {
            user_id,
            is_admin: data.claims.role.as_deref() == Some("admin"),
        };
        let latest = chrono::Utc::now()
            .timestamp()
            .saturating_add(MAX_SESSION_SECONDS);
        Ok((viewer, data.claims.exp.min(latest)))
    }

    /// The viewer of an `Authorization` header value: `None` when absent, an error when not a valid bearer token.
    pub fn viewer_from_header(&self, header: Option<&str>) -> Result<Option<Viewer>, AppError> {
        Ok(self.session_from_header(header)?.map(|(viewer, _)| viewer))
    }

    /// As [`Self::viewer_from_header`], with the token's expiry (Unix seconds).
    pub fn session_from_header(
        &self,
        header: Option<&str>,
    ) -> Result<Option<(Viewer, i64)>, AppError> {
        let Some(value) = header else { return Ok(None) };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AppError::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`".into(),
                )
            })?;
        self.verify_until(token).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_is_explained_in_plain_words() {
        let keys = JwtKeys::new("a-secret-of-sixteen-bytes");
        let message = |token: &str| keys.verify(token).expect_err("refused").message();
        assert_eq!(message("nope"), "the bearer token is not a JWT");
        let other = JwtKeys::new("another-secret-of-16-bytes")
            .issue(1, false, 60)
            .expect("signs");
        assert_eq!(message(&other), "the bearer token's signature is not valid");
        let expired = keys.issue(1, false, -60).expect("signs");
        assert_eq!(message(&expired), "the bearer token has expired");
    }

    /// Signs arbitrary claims with `secret`.
    fn sign(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("signs")
    }

    #[test]
    fn nbf_issuer_and_audience_are_honoured_and_a_huge_exp_is_clamped() {
        let secret = "a-secret-of-sixteen-bytes";
        let now = chrono::Utc::now().timestamp();
        let keys = JwtKeys::new(secret);
        let early = sign(
            secret,
            serde_json::json!({ "sub": "1", "exp": now + 600, "nbf": now + 300 }),
        );
        let refused = keys.verify(&early).expect_err("not valid yet").message();
        assert!(refused.contains("not valid yet"), "{refused}");

        // Without settings, any iss and aud pass; with them, only the right ones.
        let foreign = sign(
            secret,
            serde_json::json!({ "sub": "1", "exp": now + 600, "iss": "elsewhere", "aud": "other" }),
        );
        assert!(keys.verify(&foreign).is_ok());
        let strict = JwtKeys::new(secret).requiring(Some("accounts"), Some("follow"));
        assert!(strict.verify(&foreign).is_err());
        let bare = sign(secret, serde_json::json!({ "sub": "1", "exp": now + 600 }));
        assert!(strict.verify(&bare).is_err(), "iss and aud are required");
        let own = strict.issue(7, false, 60).expect("signs");
        assert_eq!(strict.verify(&own).map(|v| v.user_id).ok(), Some(7));

        let forever = sign(secret, serde_json::json!({ "sub": "1", "exp": i64::MAX }));
        let (_, expiry) = keys.verify_until(&forever).expect("valid");
        assert!(expiry <= now + MAX_SESSION_SECONDS + 5, "{expiry}");
    }

    #[test]
    fn a_token_round_trips() {
        let keys = JwtKeys::new("a-secret-of-sixteen-bytes");
        let token = keys.issue(42, true, 60).expect("signs");
        assert_eq!(
            keys.verify(&token).expect("valid"),
            Viewer {
                user_id: 42,
                is_admin: true
            }
        );
    }

    #[test]
    fn expired_and_forged_tokens_are_refused() {
        let keys = JwtKeys::new("a-secret-of-sixteen-bytes");
        let expired = keys.issue(1, false, -3600).expect("signs");
        assert!(
            matches!(keys.verify(&expired), Err(AppError::Unauthenticated(m)) if m.contains("expired"))
        );
        let forged = JwtKeys::new("another-secret-sixteen")
            .issue(1, false, 60)
            .expect("signs");
        assert!(matches!(
            keys.verify(&forged),
            Err(AppError::Unauthenticated(_))
        ));
        assert!(keys.viewer_from_header(Some("Basic abc")).is_err());
        assert_eq!(keys.viewer_from_header(None).expect("anonymous"), None);
    }
}
