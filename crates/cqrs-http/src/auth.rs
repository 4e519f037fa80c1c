//! Who is calling: bearer JWTs, verified with a shared HS256 secret or with
//! the public keys (RS256, ES256) of a JWKS file that is read again when it
//! changes. What a caller may do is the service's business; this module only
//! says who it is.

use crate::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

/// A verified caller: the token's subject and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: who calls (for a customer, the customer id).
    pub sub: String,
    /// `roles`, as the token lists them.
    pub roles: BTreeSet<String>,
    /// `exp`: when the token stops being valid (seconds since 1970).
    pub expires: u64,
}

/// A credential that must not reach logs: its `Debug` says only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret a file holds (one trailing line break dropped), so that
    /// it need not be a flag, which any user of the machine sees in `ps`.
    pub fn from_file(path: &Path) -> Result<Secret, std::io::Error> {
        let text = std::fs::read_to_string(path)?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty",
            ));
        }
        Ok(Secret(text.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// The longest a token may still be valid when it is presented, unless
/// configured otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtOptions {
    /// The HS256 shared secret, if HS256 tokens are accepted.
    pub hs256_secret: Option<Secret>,
    /// A JWKS file of public keys, if RS256/ES256 tokens are accepted.
    pub jwks: Option<PathBuf>,
    /// `iss` must be this, when set.
    pub issuer: Option<String>,
    /// `aud` must include this, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Tokens whose `exp` lies further ahead than this are refused: a token
    /// that never expires is one that cannot be taken back.
    pub max_lifetime: Duration,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

/// Why a request has no verified caller. Texts never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("this route needs a bearer token (Authorization: Bearer <JWT>)")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    /// A token that does not verify: signature, algorithm, time or claims.
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
}

impl AuthError {
    /// 401 with the `WWW-Authenticate` challenge of RFC 6750.
    pub fn response(&self) -> Response {
        let challenge = match self {
            AuthError::Missing => r#"Bearer realm="orders""#.to_owned(),
            AuthError::Malformed | AuthError::Invalid(_) => {
                let why = self.to_string().replace('"', "'");
                format!(
                    r#"Bearer realm="orders", error="invalid_token", error_description="{why}""#
                )
            }
        };
        let code = match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Malformed | AuthError::Invalid(_) => "invalid_token",
        };
        let mut res =
            ApiError::new(StatusCode::UNAUTHORIZED, code, self.to_string()).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// Why the verifier cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The JWKS file cannot be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JWKS file is not a key set.
    #[error("{path} is not a JWKS key set: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's complaint.
        source: serde_json::Error,
    },
    /// Neither a secret nor a key set is given.
    #[error("no HS256 secret and no JWKS file: nothing to verify tokens with")]
    NoKeys,
    /// A token cannot be signed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The claims this service reads.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    // Defaulted so that a missing `sub` is reported as such by the
    // validation, not as a token that does not decode.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    // Required by the validation; defaulted only to report it as missing.
    #[serde(default)]
    exp: u64,
}

/// Checks bearer tokens.
pub struct JwtVerifier {
    options: JwtOptions,
    hs256: Option<DecodingKey>,
    /// The key set and the modification time it was read at.
    jwks: RwLock<Option<(Option<SystemTime>, JwkSet)>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier; reads the JWKS file now, so that a bad one stops the start.
    pub fn new(options: JwtOptions) -> Result<Self, AuthSetupError> {
        if options.hs256_secret.is_none() && options.jwks.is_none() {
            return Err(AuthSetupError::NoKeys);
        }
        let hs256 = options
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let jwks = match &options.jwks {
            Some(path) => Some(read_jwks(path)?),
            None => None,
        };
        Ok(Self {
            options,
            hs256,
            jwks: RwLock::new(jwks),
        })
    }

    /// Reads the JWKS file again if it changed since the last read (or
    /// always, with `force`); true when the keys were replaced. A file that
    /// does not read keeps the keys in use.
    pub fn reload(&self, force: bool) -> Result<bool, AuthSetupError> {
        let Some(path) = &self.options.jwks else {
            return Ok(false);
        };
        let current = self.jwks.read().ok().and_then(|k| k.as_ref().map(|k| k.0));
        if !force && current.is_some_and(|seen| seen == modified(path)) {
            return Ok(false);
        }
        let fresh = read_jwks(path)?;
        if let Ok(mut keys) = self.jwks.write() {
            *keys = Some(fresh);
        }
        Ok(true)
    }

    /// Polls the JWKS file every `every` and reloads it when it changed,
    /// and reads it again on SIGHUP; runs until dropped.
    pub async fn watch(&self, every: Duration) {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| {
                tracing::warn!(error = %e, "no SIGHUP handler: the key set reloads on change only")
            })
            .ok();
        loop {
            let forced = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = tokio::time::sleep(every) => false,
            };
            match self.reload(forced) {
                Ok(true) => tracing::info!(forced, "key set reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "key set not reloaded; the keys in use stay")
                }
            }
        }
    }

    /// The caller a request's `Authorization` header names.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        self.verify(bearer(headers)?)
    }

    /// Verifies a token: algorithm, signature, `exp`/`nbf` with leeway, and
    /// `iss`/`aud` when configured.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::Invalid(reason(&e));
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let validation = self.validation(header.alg);
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or_else(|| unsupported(header.alg))?;
                jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(invalid)?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let key = self.public_key(header.alg, header.kid.as_deref())?;
                jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(invalid)?
            }
            other => return Err(unsupported(other)),
        }
        .claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("`sub` is empty".into()));
        }
        let latest = jsonwebtoken::get_current_timestamp()
            .saturating_add(self.options.max_lifetime.as_secs())
            .saturating_add(self.options.leeway.as_secs());
        if claims.exp > latest {
            return Err(AuthError::Invalid(format!(
                "`exp` lies more than {} s ahead (the longest a token may live here)",
                self.options.max_lifetime.as_secs()
            )));
        }
        Ok(Caller {
            sub: claims.sub,
            roles: claims.roles.into_iter().collect(),
            expires: claims.exp,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.options.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &self.options.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.options.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }

    /// The key of the set with this `kid` (or the only one of this
    /// algorithm, when the token names none).
    fn public_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let keys = self
            .jwks
            .read()
            .map_err(|_| AuthError::Invalid("the key set is unavailable".into()))?;
        let Some((_, set)) = keys.as_ref() else {
            return Err(unsupported(alg));
        };
        let fits = |k: &&Jwk| {
            k.common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{alg:?}"))
        };
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None => {
                let mut candidates = set.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "no key {} in the key set",
                kid.unwrap_or("(no kid)")
            ))
        })?;
        DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(reason(&e)))
    }
}

fn unsupported(alg: Algorithm) -> AuthError {
    AuthError::Invalid(format!("{alg:?} tokens are not accepted here"))
}

/// What went wrong, in words that cannot carry the token.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        K::InvalidAlgorithm => "algorithm not accepted".into(),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "not a JWT".into(),
        _ => "does not verify".into(),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_jwks(path: &Path) -> Result<(Option<SystemTime>, JwkSet), AuthSetupError> {
    let at = modified(path);
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let set = serde_json::from_str(&text).map_err(|source| AuthSetupError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok((at, set))
}

/// The bearer token of a request, if it sends an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Malformed),
    }
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct Mint<'a> {
    /// `sub`.
    pub sub: &'a str,
    /// `roles`.
    pub roles: &'a [String],
    /// How long it is valid.
    pub ttl: Duration,
    /// `iss`, if any.
    pub issuer: Option<&'a str>,
    /// `aud`, if any.
    pub audience: Option<&'a str>,
}

/// Signs an HS256 token (for local use and tests: real deployments get
/// tokens from their identity provider).
pub fn mint_hs256(secret: &Secret, mint: &Mint<'_>) -> Result<String, AuthSetupError> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::json!({
        "sub": mint.sub,
        "roles": mint.roles,
        "iat": now,
        "nbf": now,
        "exp": now + mint.ttl.as_secs(),
    });
    if let Some(iss) = mint.issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = mint.audience {
        claims["aud"] = aud.into();
    }
    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}
