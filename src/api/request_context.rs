//! Request id (accepted from `x-request-id` when sane, generated otherwise, always echoed) and one access-log line per
//! request. The log names the matched route pattern only: paths, query strings and headers may carry secrets (a token
//! pasted into a URL by mistake must not reach the logs).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Set by gateway handlers on their response: time spent waiting on upstreams (and deliberate sleeps), so that the
/// overhead metric can count everything else the request cost — auth, body parsing, logging included.
pub struct UpstreamTime(pub std::time::Duration);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The main listener's one middleware (each `from_fn` layer costs a boxed future and a service hop per request): the
/// request id and access log, then HEAD served as GET and the body's time limit (see [`super::head_as_get`] and
/// [`super::bound_body_time`]).
pub async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        // A v4 UUID from the thread's userspace CSPRNG: no getrandom system call per request.
        .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string());
    let span = tracing::info_span!("request", request_id = %id);
    let method = req.method().clone();
    let started = Instant::now();
    super::serve_head_as_get(&mut req);
    super::bound_body_time(&mut req);
    let mut res = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    let _guard = span.enter();
    let upstream = res.response().extensions().get::<UpstreamTime>().map(|u| u.0);
    // The route pattern is looked up (and allocated) only when the line is written.
    if tracing::enabled!(tracing::Level::INFO) {
        let route = res.request().match_pattern().unwrap_or_else(|| "(unmatched)".to_owned());
        tracing::info!(
            method = %method,
            route = %route,
            status = res.status().as_u16(),
            latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
    if let Some(upstream) = upstream
        && let Some(state) = res.request().app_data::<actix_web::web::Data<super::AppState>>()
    {
        state.engine.metrics.overhead(started.elapsed().saturating_sub(upstream));
    }
    Ok(res)
}
