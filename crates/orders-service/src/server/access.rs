//! Who may do what, in one place: the rights a route needs (one table,
//! [`need`]), the guard that checks them on every request, and the rule for
//! a customer's own orders ([`Caller::own_customer`]).

use super::App;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cqrs_http::auth::{AuthError, JwtVerifier};
use cqrs_http::ticket::TicketKeys;
use cqrs_http::ApiError;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// A right a token's `roles` can grant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::EnumString, strum::IntoStaticStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum Right {
    /// Places, reads and cancels its own orders (`sub` is the customer id).
    Customer,
    /// Pays orders.
    Payments,
    /// Ships and delivers orders.
    Warehouse,
    /// Everything, including stats, metrics and the live stream.
    Operator,
}

/// Who a request comes from, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (loopback, or `--insecure-no-auth`): every right.
    Unchecked,
    /// A verified token.
    Token {
        /// Its subject.
        sub: String,
        /// The rights its roles grant (unknown roles grant none).
        rights: BTreeSet<Right>,
        /// When the token expires (seconds since 1970).
        expires: u64,
    },
}

impl Caller {
    /// A verified token's caller.
    pub fn from_token(caller: cqrs_http::auth::Caller) -> Self {
        let rights = caller.roles.iter().filter_map(|r| r.parse().ok()).collect();
        Caller::Token {
            sub: caller.sub,
            rights,
            expires: caller.expires,
        }
    }

    /// When the caller's token expires (seconds since 1970); `None` when no
    /// token was checked.
    pub fn expires(&self) -> Option<u64> {
        match self {
            Caller::Unchecked => None,
            Caller::Token { expires, .. } => Some(*expires),
        }
    }

    /// Whether the caller holds `right`.
    pub fn has(&self, right: Right) -> bool {
        match self {
            Caller::Unchecked => true,
            Caller::Token { rights, .. } => rights.contains(&right),
        }
    }

    /// The customer whose orders alone this caller may see and change: its
    /// `sub`, for a caller that is a customer and no operator.
    pub fn own_customer(&self) -> Option<&str> {
        match self {
            Caller::Token { sub, rights, .. }
                if rights.contains(&Right::Customer) && !rights.contains(&Right::Operator) =>
            {
                Some(sub)
            }
            _ => None,
        }
    }

    /// Whether this caller may see an order of `customer_id` (or anything
    /// that belongs to it): staff see every order, a customer its own.
    pub fn may_see(&self, customer_id: &str) -> bool {
        self.own_customer().is_none_or(|own| own == customer_id)
    }

    /// Who to name in logs and traces (never the token).
    pub fn sub(&self) -> Option<&str> {
        match self {
            Caller::Unchecked => None,
            Caller::Token { sub, .. } => Some(sub),
        }
    }

    /// Whose idempotency keys a request's key is one of: the token's
    /// subject, or one shared scope when nobody is checked. (A subject is
    /// never empty: the verifier refuses an empty `sub`.)
    pub fn key_scope(&self) -> &str {
        self.sub().unwrap_or("")
    }

    /// The verified caller again, roles named by its rights (what a stream
    /// ticket carries); `None` when no token was checked.
    fn verified(&self) -> Option<cqrs_http::auth::Caller> {
        match self {
            Caller::Unchecked => None,
            Caller::Token {
                sub,
                rights,
                expires,
            } => Some(cqrs_http::auth::Caller {
                sub: sub.clone(),
                roles: rights.iter().map(|r| <&str>::from(*r).to_owned()).collect(),
                expires: *expires,
            }),
        }
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: served to anyone.
    Nothing,
    /// A verified caller with one of these rights (and the handler then
    /// limits a customer to its own orders).
    OneOf(&'static [Right]),
}

use Right::{Customer, Operator, Payments, Warehouse};

/// The rights each route needs: the whole authorization table.
pub fn need(method: &Method, route: &str, metrics_public: bool) -> Need {
    const STAFF_AND_OWNER: &[Right] = &[Customer, Payments, Warehouse, Operator];
    const OWNER: &[Right] = &[Customer, Operator];
    match (method.as_str(), route) {
        // The pages carry no data: what they show comes from the API and
        // the stream, with the token typed into them (a browser cannot
        // send one when it opens a page).
        (_, "/" | "/ops" | "/openapi.json" | "/healthz" | "/readyz") => Need::Nothing,
        ("GET", "/metrics") if metrics_public => Need::Nothing,
        ("POST", "/orders") => Need::OneOf(OWNER),
        ("GET", "/orders" | "/orders/{id}") => Need::OneOf(STAFF_AND_OWNER),
        ("GET", "/orders/{id}/history" | "/customers/{id}/summary" | "/commands/{id}/trace") => {
            Need::OneOf(OWNER)
        }
        ("POST", "/orders/{id}/pay") => Need::OneOf(&[Payments, Operator]),
        ("POST", "/orders/{id}/ship" | "/orders/{id}/deliver") => {
            Need::OneOf(&[Warehouse, Operator])
        }
        ("POST", "/orders/{id}/cancel") => Need::OneOf(OWNER),
        // A customer its own (the handler checks), an operator anyone's.
        ("DELETE", "/customers/{id}/personal-data") => Need::OneOf(OWNER),
        ("POST", "/inventory/{sku}/stock") => Need::OneOf(&[Warehouse, Operator]),
        ("GET", "/inventory" | "/inventory/{sku}") => Need::OneOf(&[Payments, Warehouse, Operator]),
        // The order saga's stock commands, from the order side's token.
        (
            "POST",
            "/inventory/{sku}/reservations"
            | "/inventory/{sku}/releases"
            | "/inventory/{sku}/dispatches",
        )
        | ("GET", "/stock-commands") => Need::OneOf(&[Warehouse, Operator]),
        // The operations API: the console's data and actions.
        (_, r) if r.starts_with("/ops/") => Need::OneOf(&[Operator]),
        // Stats, metrics, the live stream, and any route added later.
        _ => Need::OneOf(&[Operator]),
    }
}

/// How a server checks its callers.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Verifies tokens; `None`: authentication is off.
    pub verifier: Option<Arc<JwtVerifier>>,
    /// Signs and checks stream tickets (with a verifier).
    pub tickets: Option<Arc<TicketKeys>>,
    /// The clock skew allowed on a token's `exp`: a stream ends this long
    /// after its token expires.
    pub leeway: Duration,
    /// `/metrics` served without a token.
    pub metrics_public: bool,
}

/// The cookie `POST /stream/ticket` sets: a stream ticket (never the
/// bearer token), for the event stream only (a browser's `EventSource`
/// cannot send headers).
pub const STREAM_COOKIE: &str = "orders_stream";

/// The caller a request presents: its `Authorization` header, or for the
/// event stream alone, a ticket in the stream cookie.
fn present(
    access: &Access,
    verifier: &JwtVerifier,
    route: &str,
    parts: &Parts,
) -> Result<cqrs_http::auth::Caller, AuthError> {
    match cqrs_http::auth::bearer(&parts.headers) {
        Err(AuthError::Missing) if route == "/stream" => {
            let ticket = stream_cookie(&parts.headers).ok_or(AuthError::Missing)?;
            let keys = access.tickets.as_ref().ok_or(AuthError::Missing)?;
            keys.verify(ticket)
        }
        Ok(token) => verifier.verify(token),
        Err(e) => Err(e),
    }
}

/// The stream cookie's value, if the request carries one.
fn stream_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == STREAM_COOKIE)
        .map(|(_, value)| value)
}

/// Why a request may not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No caller could be verified: 401.
    Unauthenticated(AuthError),
    /// A verified caller without a right the route needs: 403.
    Forbidden(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated(e) => e.response(),
            Refusal::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
            }
        }
    }
}

impl Access {
    /// A stream ticket for `caller` as a `Set-Cookie` value (`Secure` over
    /// HTTPS); `None` when nobody is checked.
    pub fn ticket_cookie(&self, caller: &Caller, https: bool) -> Result<Option<String>, ApiError> {
        let (Some(keys), Some(caller)) = (&self.tickets, caller.verified()) else {
            return Ok(None);
        };
        let ticket = keys.issue(&caller).map_err(|e| {
            tracing::error!(error = %e, "no stream ticket");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no stream ticket could be made",
            )
        })?;
        let secure = if https { "; Secure" } else { "" };
        Ok(Some(format!(
            "{STREAM_COOKIE}={}; Path=/stream; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ticket.value, ticket.max_age
        )))
    }

    /// When a long-lived request of `caller` must end: its token's expiry
    /// plus the leeway (seconds since 1970); `None` when nobody is checked.
    pub fn ends_at(&self, caller: &Caller) -> Option<u64> {
        caller
            .expires()
            .map(|e| e.saturating_add(self.leeway.as_secs()))
    }

    /// Whether `headers` carry a token that verifies and grants the
    /// operator's right (or nobody is checked): who may read details an
    /// open route keeps from strangers.
    pub fn is_operator(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(verifier) = &self.verifier else {
            return true;
        };
        verifier
            .caller(headers)
            .is_ok_and(|c| Caller::from_token(c).has(Right::Operator))
    }

    /// Who the request comes from, or why it may not go on.
    fn admit(&self, method: &Method, route: &str, parts: &Parts) -> Result<Caller, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::Unchecked);
        };
        let Need::OneOf(rights) = need(method, route, self.metrics_public) else {
            return Ok(Caller::Unchecked);
        };
        let caller = match present(self, verifier, route, parts) {
            Ok(c) => Caller::from_token(c),
            Err(e) => {
                if e != AuthError::Missing {
                    tracing::info!(route, reason = %e, "token refused");
                }
                return Err(Refusal::Unauthenticated(e));
            }
        };
        if rights.iter().any(|r| caller.has(*r)) {
            return Ok(caller);
        }
        let names: Vec<&str> = rights.iter().map(|r| <&str>::from(*r)).collect();
        tracing::info!(sub = caller.sub(), route, "forbidden");
        Err(Refusal::Forbidden(format!(
            "{method} {route} needs one of the roles {}",
            names.join(", ")
        )))
    }
}

/// Middleware on every route: checks the caller against [`need`] and
/// hands the handlers a [`Caller`].
pub async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    match app.access.admit(&parts.method, &route, &parts) {
        Ok(caller) => {
            let ends_at = app.access.ends_at(&caller);
            let read = parts.method == Method::GET;
            parts.extensions.insert(caller);
            let answer = next.run(Request::from_parts(parts, body));
            match ends_at.filter(|_| read) {
                // A read that waits (for consistency) ends with its token;
                // a command is never cut off halfway.
                Some(ends_at) => until_expiry(ends_at, answer).await,
                None => answer.await,
            }
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// How long until `unix_secs` (seconds since 1970); zero once it passed.
pub fn left_until(unix_secs: u64) -> Duration {
    (std::time::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}

/// `answer`, or 401 once the token expires (`ends_at`, seconds since
/// 1970, the leeway included) while it is still being worked out. A stream
/// returns its response at once and ends itself (`live::stream`).
async fn until_expiry(
    ends_at: u64,
    answer: impl std::future::Future<Output = Response>,
) -> Response {
    match tokio::time::timeout(left_until(ends_at), answer).await {
        Ok(res) => res,
        Err(_) => AuthError::Invalid("expired while the request waited".into()).response(),
    }
}

/// Writes the table into the API document: a `bearer` JWT scheme, and on
/// every operation that needs a right, the requirement and its 401 and 403
/// answers (naming the roles). Open operations are left without one.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.bearer_format = Some("JWT".into());
    scheme.description = Some(
        "A JWT with `sub` (the caller; a customer's id) and `roles` (customer, payments, \
         warehouse, operator). Checked only when the server is started with \
         --jwt-hs256-secret or --jwt-jwks."
            .into(),
    );
    doc.components
        .get_or_insert_with(Default::default)
        .security_schemes
        .insert("bearer".into(), SecurityScheme::Http(scheme));
    let answer = |what: String| {
        let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody")));
        ResponseBuilder::new()
            .description(what)
            .content("application/json", body.build())
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, op) in operations {
            let (Some(op), Need::OneOf(rights)) = (op.as_mut(), need(&method, path, false)) else {
                continue;
            };
            let names: Vec<&str> = rights.iter().map(|r| <&str>::from(*r)).collect();
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let responses = &mut op.responses.responses;
            let missing = "No valid bearer token (`WWW-Authenticate: Bearer` says why)";
            responses.insert("401".into(), answer(missing.into()).into());
            let forbidden = format!("The caller has none of the roles {}", names.join(", "));
            responses.insert("403".into(), answer(forbidden).into());
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Only a route the guard did not wrap has none: a bug, refused.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the route was served without its access check",
            )
        })
    }
}

impl Access {
    /// How callers are checked: the token verifier (its JWKS file read now,
    /// so that a bad one stops the start), and with a key set, the role that
    /// reads the file again when it changes or on SIGHUP.
    pub fn open(
        config: &crate::Config,
    ) -> anyhow::Result<(
        Access,
        Option<impl std::future::Future<Output = ()> + Send + 'static>,
    )> {
        use anyhow::Context;
        let metrics_public = config.metrics_public;
        let Some(options) = &config.jwt else {
            let access = Access {
                metrics_public,
                ..Access::default()
            };
            return Ok((access, None));
        };
        let verifier = JwtVerifier::new(options.clone()).context("cannot set up token checks")?;
        let tickets = match &config.stream_ticket_secret {
            Some(secret) => TicketKeys::from_secret(secret),
            None => TicketKeys::random()?,
        };
        let verifier = Arc::new(verifier);
        let watcher = options.jwks.is_some().then(|| {
            let watched = verifier.clone();
            async move { watched.watch(Duration::from_secs(2)).await }
        });
        let access = Access {
            verifier: Some(verifier),
            tickets: Some(Arc::new(tickets)),
            leeway: options.leeway,
            metrics_public,
        };
        Ok((access, watcher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sub: &str, rights: &[Right]) -> Caller {
        Caller::Token {
            sub: sub.into(),
            rights: rights.iter().copied().collect(),
            expires: 0,
        }
    }

    #[test]
    fn a_customer_sees_only_its_own_and_staff_see_all() {
        let alice = token("alice", &[Customer]);
        assert_eq!(alice.own_customer(), Some("alice"));
        assert!(alice.may_see("alice") && !alice.may_see("bob"));
        let ops = token("ops", &[Customer, Operator]);
        assert_eq!(ops.own_customer(), None, "an operator is not limited");
        assert!(token("w", &[Warehouse]).may_see("bob"));
        assert!(Caller::Unchecked.may_see("bob") && Caller::Unchecked.has(Operator));
    }

    #[test]
    fn roles_name_rights_and_unknown_roles_grant_none() {
        let caller = Caller::from_token(cqrs_http::auth::Caller {
            sub: "x".into(),
            roles: ["payments".into(), "admin".into(), "Operator".into()].into(),
            expires: 0,
        });
        assert_eq!(caller, token("x", &[Payments]));
    }

    #[test]
    fn routes_nobody_listed_need_an_operator() {
        assert_eq!(
            need(&Method::GET, "/some/new/route", false),
            Need::OneOf(&[Operator])
        );
        assert_eq!(
            need(&Method::GET, "/metrics", false),
            Need::OneOf(&[Operator])
        );
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Nothing);
    }
}
