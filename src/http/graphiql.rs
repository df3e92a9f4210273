//! GraphiQL for browsers, served with its assets from the binary so that it works on a closed network.
//!
//! The page is `assets/graphiql/index.html`; the assets are the pinned npm builds that
//! `scripts/vendor-graphiql.sh` copies into `assets/graphiql/` (see its README for versions and licences).

use std::sync::LazyLock;

use axum::{
    Router,
    extract::{Path, RawQuery},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The page; it references each asset as `/graphiql/assets/{name}?v={hash}`.
const INDEX_HTML: &str = include_str!("../../assets/graphiql/index.html");

/// One embedded file: the binary is self-contained, as the Docker image copies only the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file the page loads, by the name in its URL.
static ASSETS: [Asset; 4] = [
    Asset {
        name: "graphiql.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    },
];

/// Each asset's content hash in hex (same order as `ASSETS`), computed once: it is the ETag and the `?v=`.
static HASHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| format!("{:016x}", fnv1a64(asset.body)))
        .collect()
});

/// FNV-1a, 64 bits: enough to tell versions of a file apart (it is a cache key, not a security check).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The GraphiQL page; `no-cache` so a browser revalidates it and picks up new asset URLs after an upgrade.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// Routes for the page's assets, merged into the service's router.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/graphiql/assets/{file}", get(asset))
}

/// `GET /graphiql/assets/{file}`: an embedded asset, cached for good when the URL names its current hash.
async fn asset(
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(index) = ASSETS.iter().position(|asset| asset.name == file) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such GraphiQL asset\n",
        )
            .into_response();
    };
    let asset = &ASSETS[index];
    let hash = HASHES[index].as_str();
    let etag = format!("\"{hash}\"");
    // Only a URL that carries this very content's hash may be cached without revalidation.
    let versioned = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(hash));
    let cache_control = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if matches_etag(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.body,
        )
            .into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, value);
    }
    response
}

/// Whether `If-None-Match` names `etag` (or `*`), comparing weakly as RFC 9110 asks for GET.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    /// Where `asset_routes` serves the assets; the page may load nothing else.
    const ASSET_PREFIX: &str = "/graphiql/assets/";

    /// Every `src="…"` and `href="…"` value of the page, in order.
    fn referenced_urls() -> Vec<&'static str> {
        let mut urls = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            let mut rest = INDEX_HTML;
            while let Some(start) = rest.find(attribute) {
                rest = &rest[start + attribute.len()..];
                let end = rest
                    .find('"')
                    .expect("an attribute value ends with a quote");
                urls.push(&rest[..end]);
                rest = &rest[end..];
            }
        }
        urls
    }

    /// The page's asset URLs (everything but `data:` URLs), as (file name, `v` parameter).
    fn referenced_assets() -> Vec<(&'static str, &'static str)> {
        referenced_urls()
            .into_iter()
            .filter(|url| !url.starts_with("data:"))
            .map(|url| {
                let path = url.strip_prefix(ASSET_PREFIX).unwrap_or_else(|| {
                    panic!("{url}: the page may load only {ASSET_PREFIX}… (or data: URLs)")
                });
                let (name, version) = path
                    .split_once("?v=")
                    .unwrap_or_else(|| panic!("{url}: an asset URL carries ?v=<content hash>"));
                (name, version)
            })
            .collect()
    }

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(etag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        asset_routes::<()>()
            .oneshot(request.body(Body::empty()).expect("a valid request"))
            .await
            .expect("the router is infallible")
    }

    #[test]
    fn the_page_loads_react_then_graphiql_and_its_stylesheet() {
        let names: Vec<_> = referenced_assets()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "react.production.min.js",
                "react-dom.production.min.js",
                "graphiql.min.js",
                "graphiql.min.css"
            ]
        );
    }

    #[test]
    fn every_asset_of_the_page_is_embedded_with_its_current_hash() {
        for (name, version) in referenced_assets() {
            let index = ASSETS
                .iter()
                .position(|asset| asset.name == name)
                .unwrap_or_else(|| panic!("index.html loads {name}, which is not embedded"));
            assert_eq!(
                version, HASHES[index],
                "index.html loads {name}?v={version}, but the embedded file's hash is {}: \
                 run scripts/vendor-graphiql.sh (or fix the ?v= in assets/graphiql/index.html)",
                HASHES[index]
            );
        }
    }

    #[test]
    fn every_embedded_asset_is_used_by_the_page() {
        let names: Vec<_> = referenced_assets()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for asset in &ASSETS {
            assert!(
                names.contains(&asset.name),
                "{} is embedded but unused",
                asset.name
            );
            assert!(!asset.body.is_empty(), "{} is empty", asset.name);
        }
    }

    #[test]
    fn the_page_talks_to_this_server_only() {
        assert!(INDEX_HTML.contains("new URL('/graphql', location.href)"));
        assert!(INDEX_HTML.contains("location.host + '/graphql/ws'"));
        assert!(!INDEX_HTML.contains("//cdn") && !INDEX_HTML.contains("unpkg"));
    }

    #[tokio::test]
    async fn every_url_of_the_page_is_served_with_its_type_and_long_caching() {
        for (name, version) in referenced_assets() {
            let response = get(&format!("{ASSET_PREFIX}{name}?v={version}"), None).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let headers = response.headers().clone();
            let expected_type = if name.ends_with(".css") {
                "text/css; charset=utf-8"
            } else {
                "text/javascript; charset=utf-8"
            };
            assert_eq!(headers[header::CONTENT_TYPE], expected_type, "{name}");
            assert_eq!(
                headers[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable",
                "{name}"
            );
            assert_eq!(headers[header::ETAG], format!("\"{version}\"").as_str());
            let body = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("an in-memory body");
            let embedded = ASSETS.iter().find(|a| a.name == name).expect("embedded");
            assert_eq!(&body[..], embedded.body, "{name}");
        }
    }

    #[tokio::test]
    async fn a_stale_or_missing_version_is_served_but_revalidated() {
        for uri in [
            "/graphiql/assets/graphiql.min.js",
            "/graphiql/assets/graphiql.min.js?v=0123456789abcdef",
        ] {
            let response = get(uri, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "no-cache",
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_and_another_gets_the_file() {
        let etag = format!("\"{}\"", HASHES[0]);
        let response = get("/graphiql/assets/graphiql.min.js", Some(&etag)).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag.as_str());
        let weak_in_list = format!("\"other\", W/{etag}");
        let response = get("/graphiql/assets/graphiql.min.js", Some(&weak_in_list)).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = get("/graphiql/assets/graphiql.min.js", Some("\"other\"")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unknown_asset_is_404() {
        for uri in [
            "/graphiql/assets/nope.js",
            "/graphiql/assets/index.html",
            "/graphiql/assets/..%2FCargo.toml",
        ] {
            assert_eq!(
                get(uri, None).await.status(),
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn the_page_is_html_and_revalidated() {
        let response = page().await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
