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
    /// How long it is valid, in seconds (at most --jwt-max-lifetime-secs).
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// The longest the server accepts, in seconds.
    #[arg(long, env = "ORDERS_JWT_MAX_LIFETIME_SECS",
          default_value_t = cqrs_http::auth::DEFAULT_MAX_LIFETIME.as_secs())]
    jwt_max_lifetime_secs: u64,
    /// The server's HS256 secret (as a flag it shows in `ps`: prefer the
    /// file or the environment).
    #[arg(
        long,
        env = "ORDERS_JWT_HS256_SECRET",
        hide_env_values = true,
        required_unless_present = "jwt_hs256_secret_file",
        conflicts_with = "jwt_hs256_secret_file"
    )]
    jwt_hs256_secret: Option<Secret>,
    /// A file holding the server's HS256 secret.
    #[arg(long, env = "ORDERS_JWT_HS256_SECRET_FILE", value_name = "PATH")]
    jwt_hs256_secret_file: Option<std::path::PathBuf>,
    /// `iss` to put in the token.
    #[arg(long, env = "ORDERS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` to put in the token.
    #[arg(long, env = "ORDERS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

/// Prints a token for `a`.
pub fn token(a: TokenArgs) -> anyhow::Result<()> {
    if a.ttl_secs > a.jwt_max_lifetime_secs {
        anyhow::bail!(
            "--ttl-secs {} is longer than the server accepts (--jwt-max-lifetime-secs {})",
            a.ttl_secs,
            a.jwt_max_lifetime_secs
        );
    }
    let secret = match (&a.jwt_hs256_secret_file, a.jwt_hs256_secret.clone()) {
        (Some(path), _) => crate::serve::read_secret(path, "--jwt-hs256-secret-file")?,
        (None, Some(secret)) => secret,
        (None, None) => anyhow::bail!("no HS256 secret: give --jwt-hs256-secret-file"),
    };
    let mint = Mint {
        sub: &a.sub,
        roles: &a.roles,
        ttl: Duration::from_secs(a.ttl_secs),
        issuer: a.jwt_issuer.as_deref(),
        audience: a.jwt_audience.as_deref(),
    };
    println!("{}", mint_hs256(&secret, &mint)?);
    Ok(())
}
