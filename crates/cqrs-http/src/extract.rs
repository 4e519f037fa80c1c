//! Extractors whose rejections are JSON errors with the right 4xx status.

use crate::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

/// A JSON body: 415 without a JSON content type, 413 over the limit, 400 for
/// bad syntax, 422 (naming the field) for a missing, unknown or mistyped field.
pub struct JsonBody<T>(pub T);

/// The field a serde message is about. axum reports the path of the value
/// that failed ("items[0].quantity: invalid type ..."); for a missing field
/// the path is its parent, so the name in backticks is appended.
fn field_of(message: &str) -> Option<String> {
    let tail = message
        .split_once("target type: ")
        .map(|(_, t)| t)
        .unwrap_or(message);
    let (path, rest) = match tail.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (Some(p).filter(|p| *p != "."), r),
        _ => (None, tail),
    };
    let quoted = || rest.split('`').nth(1).map(str::to_owned);
    if rest.starts_with("missing field `") {
        let name = quoted()?;
        return Some(match path {
            Some(p) => format!("{p}.{name}"),
            None => name,
        });
    }
    if path.is_none() && rest.starts_with("unknown field `") {
        return quoted();
    }
    path.map(str::to_owned)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r {
        JsonRejection::JsonDataError(_) => {
            let field = field_of(&text);
            let message = text.replace(
                "Failed to deserialize the JSON body into the target type: ",
                "",
            );
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
                .with_details(json!({ "field": field }))
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are limited to {} bytes",
                crate::MAX_BODY_BYTES
            ),
        ),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
    }
}

/// A query string: 400 naming the parameter when it does not parse.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(r) => {
                let r: QueryRejection = r;
                let text = r
                    .body_text()
                    .replace("Failed to deserialize query string: ", "");
                let field = field_of(&text);
                Err(
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", text)
                        .with_details(json!({ "field": field })),
                )
            }
        }
    }
}

/// The `Idempotency-Key` header: 1..=255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid_field(
            "Idempotency-Key",
            "must be 1..=255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_of("missing field `customer_id` at line 1 column 2").as_deref(),
            Some("customer_id")
        );
        assert_eq!(
            field_of("items[0]: missing field `sku` at line 1 column 2").as_deref(),
            Some("items[0].sku")
        );
        assert_eq!(
            field_of(
                "items[0].colour: unknown field `colour`, expected one of `sku` at line 1 column 9"
            )
            .as_deref(),
            Some("items[0].colour")
        );
        assert_eq!(
            field_of(
                "items[1].quantity: invalid type: string \"x\", expected i64 at line 1 column 3"
            )
            .as_deref(),
            Some("items[1].quantity")
        );
    }
}
