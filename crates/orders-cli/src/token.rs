//! `orders token`: a bearer token signed with the HS256 secret.

use cqrs_http::auth::{mint_hs256, Mint, Secret};
use std::time::Duration;

/// `orders token`: a bearer token signed with the HS256 secret.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// Who the token names (`sub`; for a customer, the customer id).
    #[arg(long)]
    sub: String,
    /// A role it grants (repeatable or comma-separated).
    #[arg(long = "role", required = true, value_delimiter = ',',
          value_parser = ["customer", "payments", "warehouse", "operator"])]
    roles: Vec<String>,
    /// How long it is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// The server's HS256 secret.
    #[arg(long, env = "ORDERS_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Secret,
    /// `iss` to put in the token.
    #[arg(long, env = "ORDERS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` to put in the token.
    #[arg(long, env = "ORDERS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

/// Prints a token for `a`.
pub fn token(a: TokenArgs) -> anyhow::Result<()> {
    let mint = Mint {
        sub: &a.sub,
        roles: &a.roles,
        ttl: Duration::from_secs(a.ttl_secs),
        issuer: a.jwt_issuer.as_deref(),
        audience: a.jwt_audience.as_deref(),
    };
    println!("{}", mint_hs256(&a.jwt_hs256_secret, &mint)?);
    Ok(())
}
