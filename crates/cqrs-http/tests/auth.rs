//! Bearer tokens as a client presents them: every way a token can be wrong
//! is refused with its reason, and the reason never quotes the token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use axum::http::{header, HeaderMap, HeaderValue};
use cqrs_http::auth::{mint_hs256, AuthError, Caller, JwtOptions, JwtVerifier, Mint, Secret};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn secret() -> Secret {
    "a-test-secret-of-at-least-32-bytes!".parse().unwrap()
}

fn options() -> JwtOptions {
    JwtOptions {
        hs256_secret: Some(secret()),
        jwks: Some(format!("{KEYS}/jwks.json").into()),
        issuer: Some("https://id.example".into()),
        audience: Some("orders".into()),
        leeway: Duration::from_secs(5),
        ..JwtOptions::default()
    }
}

fn claims(exp_in: i64) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    json!({ "sub": "alice", "roles": ["customer"], "iss": "https://id.example",
            "aud": "orders", "exp": now + exp_in, "nbf": now - 1 })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(secret().expose().as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/rs256.pem")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/es256.pem")).unwrap()).unwrap()
        }
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn alice() -> Caller {
    Caller {
        sub: "alice".into(),
        roles: ["customer".to_owned()].into(),
        expires: 0,
    }
}

/// The caller, with the token's expiry left out of the comparison.
fn who(r: Result<Caller, AuthError>) -> Result<Caller, AuthError> {
    r.map(|c| Caller { expires: 0, ..c })
}

#[test]
fn hs256_rs256_and_es256_tokens_name_their_caller() {
    let v = JwtVerifier::new(options()).unwrap();
    assert_eq!(
        who(v.verify(&sign(Algorithm::HS256, None, &claims(60)))),
        Ok(alice())
    );
    assert_eq!(
        who(v.verify(&sign(Algorithm::RS256, Some("rsa-1"), &claims(60)))),
        Ok(alice())
    );
    assert_eq!(
        who(v.verify(&sign(Algorithm::ES256, Some("ec-1"), &claims(60)))),
        Ok(alice())
    );
    // Without a kid, the one key of the token's algorithm.
    assert_eq!(
        who(v.verify(&sign(Algorithm::ES256, None, &claims(60)))),
        Ok(alice())
    );
}

#[test]
fn every_wrong_token_is_refused_with_its_reason_and_never_quoted() {
    let v = JwtVerifier::new(options()).unwrap();
    let good = sign(Algorithm::HS256, None, &claims(60));
    // One character of the signature changed: its first, which carries six
    // whole bits (the last one's low bits must stay zero to be base64).
    let at = good.rfind('.').unwrap() + 1;
    let flipped = if &good[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(60);
        f(&mut c);
        sign(Algorithm::HS256, None, &c)
    };
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let other_key = {
        let k = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(60), &k).unwrap()
    };
    let cases = [
        (tampered, "bad signature"),
        (other_key, "bad signature"),
        (sign(Algorithm::HS256, None, &claims(-60)), "expired"),
        (
            with(&|c| c["nbf"] = json!(now + 600)),
            "not valid yet (nbf)",
        ),
        (
            with(&|c| c["iss"] = json!("https://evil.example")),
            "wrong issuer",
        ),
        (with(&|c| c["aud"] = json!("billing")), "wrong audience"),
        (
            with(&|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("sub")
                    .map(drop)
                    .unwrap_or(())
            }),
            "missing claim sub",
        ),
        (with(&|c| c["sub"] = json!("")), "`sub` is empty"),
        (
            sign(Algorithm::RS256, Some("nope"), &claims(60)),
            "no key nope in the key set",
        ),
        ("not.a.jwt".to_owned(), "not a JWT"),
    ];
    for (token, why) in cases {
        match v.verify(&token) {
            Err(AuthError::Invalid(reason)) => {
                assert_eq!(reason, why, "{token}");
                assert!(!AuthError::Invalid(reason).to_string().contains(&token));
            }
            other => panic!("{why}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn an_algorithm_without_its_key_is_refused() {
    let hs_only = JwtVerifier::new(JwtOptions {
        jwks: None,
        ..options()
    })
    .unwrap();
    let rs = sign(Algorithm::RS256, Some("rsa-1"), &claims(60));
    assert_eq!(
        hs_only.verify(&rs),
        Err(AuthError::Invalid(
            "RS256 tokens are not accepted here".into()
        ))
    );
    let jwks_only = JwtVerifier::new(JwtOptions {
        hs256_secret: None,
        ..options()
    })
    .unwrap();
    let hs = sign(Algorithm::HS256, None, &claims(60));
    assert_eq!(
        jwks_only.verify(&hs),
        Err(AuthError::Invalid(
            "HS256 tokens are not accepted here".into()
        ))
    );
    assert!(JwtVerifier::new(JwtOptions::default()).is_err());
}

#[test]
fn the_authorization_header_must_be_a_bearer_token() {
    let v = JwtVerifier::new(options()).unwrap();
    let mut h = HeaderMap::new();
    assert_eq!(v.caller(&h), Err(AuthError::Missing));
    for bad in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "token"] {
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
        assert_eq!(v.caller(&h), Err(AuthError::Malformed), "{bad}");
    }
    let token = sign(Algorithm::HS256, None, &claims(60));
    h.insert(
        header::AUTHORIZATION,
        format!("bearer {token}").parse().unwrap(),
    );
    assert_eq!(who(v.caller(&h)), Ok(alice()));
}

#[test]
fn a_minted_token_verifies_and_a_secret_never_prints() {
    let v = JwtVerifier::new(options()).unwrap();
    let roles = ["operator".to_owned()];
    let mint = Mint {
        sub: "ops",
        roles: &roles,
        ttl: Duration::from_secs(60),
        issuer: Some("https://id.example"),
        audience: Some("orders"),
    };
    let caller = v.verify(&mint_hs256(&secret(), &mint).unwrap()).unwrap();
    assert_eq!(caller.sub, "ops");
    assert!(caller.roles.contains("operator"));
    assert_eq!(format!("{:?}", secret()), "Secret(redacted)");
    assert!(!format!("{:?}", options()).contains(secret().expose()));
}

#[test]
fn a_changed_key_set_is_read_again_and_a_broken_one_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, r#"{"keys": []}"#).unwrap();
    let v = JwtVerifier::new(JwtOptions {
        hs256_secret: None,
        jwks: Some(path.clone()),
        ..options()
    })
    .unwrap();
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims(60));
    assert!(v.verify(&token).is_err(), "no keys yet");
    std::fs::copy(format!("{KEYS}/jwks.json"), &path).unwrap();
    assert!(v.reload(true).unwrap());
    assert_eq!(who(v.verify(&token)), Ok(alice()));
    std::fs::write(&path, "not json").unwrap();
    assert!(v.reload(true).is_err());
    assert_eq!(who(v.verify(&token)), Ok(alice()), "the keys in use stay");
}

#[test]
fn a_refusal_is_a_401_with_a_bearer_challenge() {
    let res = AuthError::Invalid("expired".into()).response();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="orders", error="invalid_token", error_description="the bearer token is not valid: expired""#
    );
    let res = AuthError::Missing.response();
    assert_eq!(
        res.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="orders""#
    );
}

#[test]
fn a_token_that_lives_longer_than_the_maximum_is_refused() {
    let v = JwtVerifier::new(JwtOptions {
        max_lifetime: Duration::from_secs(3600),
        ..options()
    })
    .unwrap();
    let within = sign(Algorithm::HS256, None, &claims(3600));
    assert_eq!(who(v.verify(&within)), Ok(alice()), "exactly the maximum");
    let too_far = "`exp` lies more than 3600 s ahead (the longest a token may live here)";
    for exp_in in [3600 + 5 + 2, 25 * 3600] {
        let token = sign(Algorithm::HS256, None, &claims(exp_in));
        assert_eq!(v.verify(&token), Err(AuthError::Invalid(too_far.into())));
    }
    // exp = 2^64-1: the endless token of the probe.
    let mut endless = claims(0);
    endless["exp"] = json!(u64::MAX);
    let token = sign(Algorithm::HS256, None, &endless);
    assert_eq!(v.verify(&token), Err(AuthError::Invalid(too_far.into())));
    // The default is a day.
    let v = JwtVerifier::new(options()).unwrap();
    let day = sign(Algorithm::HS256, None, &claims(24 * 3600));
    assert!(v.verify(&day).is_ok());
    let longer = sign(Algorithm::HS256, None, &claims(24 * 3600 + 60));
    assert!(v.verify(&longer).is_err());
}
