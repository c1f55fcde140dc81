//! The web console (SPEC §10): static HTML, JS and CSS embedded in the binary and served
//! on the HTTP listener under `/console/`. It is a plain client of the management API:
//! the browser sends the app token the user typed with every `POST /api`, so the console
//! has no session, no cookie and no privileged path of its own.
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles only from
//! this origin (no inline code), requests only to this origin, no framing. The script
//! builds the page with DOM calls and `textContent`, never `innerHTML` with data.

pub mod stats_op;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The policy of every console answer. `connect-src 'self'` is what lets the script call
/// `/api`; `form-action 'none'` because forms are submitted by the script only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The console's routes, to merge into the HTTP listener's router: `/` and `/console`
/// redirect to `/console/` (relative asset URLs need the trailing slash).
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", get(to_console))
        .route("/console", get(to_console))
        .route(
            "/console/",
            get(|| asset(INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/console/index.html",
            get(|| asset(INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/console/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/console/icon.svg",
            get(|| asset(ICON_SVG, "image/svg+xml")),
        )
}

// Temporary (307), not permanent: a browser would otherwise remember it for good, even
// if `/` serves something else in a later version.
async fn to_console() -> Redirect {
    Redirect::temporary("/console/")
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: revalidate rather than keep a stale script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, body).into_response()
}
