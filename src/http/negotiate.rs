//! Content negotiation of GraphQL over HTTP: which response media type a request's `Accept` allows.

/// The response media types of the GraphQL-over-HTTP specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: status codes tell request errors (4xx) from results (2xx).
    GraphQLResponse,
    /// `application/json`, for clients from before the specification: every well-formed request is 200.
    Json,
}

impl MediaType {
    /// The `Content-Type` of a response in this media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::GraphQLResponse => "application/graphql-response+json; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

/// The media type to answer in, from the request's `Accept` header; `None` when the client accepts
/// neither (406). With no header, or with only wildcards, `application/json`, as the specification
/// says a server SHOULD (such a client may predate it and read any 4xx as a transport failure);
/// otherwise the highest quality wins, and a tie goes to `application/graphql-response+json`.
pub fn negotiate(accept: Option<&str>) -> Option<MediaType> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(MediaType::Json);
    };
    let mut best: Option<(f32, u8, MediaType)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut quality = 1.0_f32;
        for parameter in parts {
            if let Some((name, value)) = parameter.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                quality = value.trim().parse().unwrap_or(0.0);
            }
        }
        // Specific types outrank wildcards at equal quality.
        let (specificity, media) = match essence.as_str() {
            "application/graphql-response+json" => (3, MediaType::GraphQLResponse),
            "application/json" => (2, MediaType::Json),
            "application/*" | "*/*" => (1, MediaType::Json),
            _ => continue,
        };
        if quality <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((q, s, _)) => quality > q || (quality == q && specificity > s),
        };
        if better {
            best = Some((quality, specificity, media));
        }
    }
    best.map(|(_, _, media)| media)
}

#[cfg(test)]
mod tests {
    use super::{MediaType::*, negotiate};

    #[test]
    fn no_header_or_a_wildcard_gets_json() {
        assert_eq!(negotiate(None), Some(Json));
        assert_eq!(negotiate(Some("")), Some(Json));
        assert_eq!(negotiate(Some("*/*")), Some(Json));
        assert_eq!(negotiate(Some("application/*")), Some(Json));
    }

    #[test]
    fn the_clients_preference_wins() {
        assert_eq!(negotiate(Some("application/json")), Some(Json));
        assert_eq!(
            negotiate(Some("application/graphql-response+json")),
            Some(GraphQLResponse)
        );
        // Apollo Client and graphql-http send this.
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json, application/json;q=0.9"
            )),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json;q=0.5, application/json"
            )),
            Some(Json)
        );
        assert_eq!(negotiate(Some("application/json, */*;q=0.1")), Some(Json));
        assert_eq!(
            negotiate(Some("Application/JSON; charset=utf-8")),
            Some(Json)
        );
    }

    #[test]
    fn a_client_that_accepts_neither_gets_nothing() {
        assert_eq!(negotiate(Some("text/plain")), None);
        assert_eq!(negotiate(Some("application/xml, text/html")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
    }
}
