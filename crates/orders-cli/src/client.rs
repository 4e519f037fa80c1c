//! Client subcommands: talk to a running server as any HTTP client would.

use anyhow::{bail, Context};
use cqrs_http::auth::Secret;
use serde_json::{json, Value};

/// Where the server is, and who is asking.
#[derive(clap::Args, Clone)]
pub struct Server {
    /// Base URL of a running `orders serve`.
    #[arg(long, env = "ORDERS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token, when the server checks callers (`orders token` mints one).
    #[arg(
        long,
        env = "ORDERS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<Secret>,
    /// A file holding the bearer token (out of `ps`, where a flag shows).
    #[arg(long, env = "ORDERS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to trust for an https:// server with a private CA.
    #[arg(long, env = "ORDERS_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Server {
    /// A request to `path` on the server, with the token if there is one.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &self.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            client = client.add_root_certificate(cert);
        }
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let req = client.build()?.request(method, url);
        let token = match &self.token_file {
            Some(path) => Some(crate::serve::read_secret(path, "--token-file")?),
            None => self.token.clone(),
        };
        Ok(match token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        })
    }
}

/// `orders create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Customer id.
    #[arg(long)]
    customer: String,
    /// An item as SKU:QUANTITY:UNIT_PRICE_CENTS (repeatable).
    #[arg(long = "item", required = true)]
    items: Vec<String>,
    /// Shipping details (personal data, stored only encrypted): who
    /// receives it; with --ship-address and --ship-email.
    #[arg(long, requires_all = ["ship_address", "ship_email"])]
    ship_name: Option<String>,
    /// The postal address.
    #[arg(long, requires = "ship_name")]
    ship_address: Option<String>,
    /// The email address.
    #[arg(long, requires = "ship_name")]
    ship_email: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// `orders erase`: a customer's personal data.
#[derive(clap::Args)]
pub struct EraseArgs {
    /// Customer id.
    customer: String,
    #[command(flatten)]
    server: Server,
}

/// An order id and the server.
#[derive(clap::Args)]
pub struct IdArgs {
    /// Order id.
    id: String,
    #[command(flatten)]
    server: Server,
}

/// `orders pay`.
#[derive(clap::Args)]
pub struct PayArgs {
    /// Order id.
    id: String,
    /// Amount in cents (the order total).
    #[arg(long)]
    amount: i64,
    /// Payment reference.
    #[arg(long = "ref", default_value = "cli")]
    payment_ref: String,
    #[command(flatten)]
    server: Server,
}

/// `orders ship`.
#[derive(clap::Args)]
pub struct ShipArgs {
    /// Order id.
    id: String,
    /// Who carries it.
    #[arg(long)]
    carrier: String,
    /// Tracking number.
    #[arg(long)]
    tracking: String,
    #[command(flatten)]
    server: Server,
}

/// `orders cancel`.
#[derive(clap::Args)]
pub struct CancelArgs {
    /// Order id.
    id: String,
    /// Why it is cancelled.
    #[arg(long, default_value = "cancelled from the CLI")]
    reason: String,
    #[command(flatten)]
    server: Server,
}

/// `orders get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// Order id.
    id: String,
    /// Wait until the read model includes this token's write.
    #[arg(long)]
    consistent_with: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// `orders list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this customer.
    #[arg(long)]
    customer: Option<String>,
    /// Only this status.
    #[arg(long)]
    status: Option<String>,
    /// Page size.
    #[arg(long)]
    limit: Option<i64>,
    /// Cursor from the previous page's `next`.
    #[arg(long)]
    after: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// Parses SKU:QTY:PRICE.
pub fn parse_item(s: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let [price, qty, sku] = parts.as_slice() else {
        bail!("item {s:?} is not SKU:QUANTITY:UNIT_PRICE_CENTS");
    };
    let quantity: i64 = qty.parse().with_context(|| format!("quantity in {s:?}"))?;
    let price: i64 = price
        .parse()
        .with_context(|| format!("unit price in {s:?}"))?;
    Ok(json!({ "sku": sku, "quantity": quantity, "unit_price_cents": price }))
}

async fn send(req: anyhow::Result<reqwest::RequestBuilder>) -> anyhow::Result<()> {
    let res = req?
        .send()
        .await
        .context("cannot reach the server (is `orders serve` running?)")?;
    let status = res.status();
    let token = res
        .headers()
        .get("x-consistency-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{}", refusal(status, &text));
    }
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    println!("{}", serde_json::to_string_pretty(&body)?);
    if let Some(t) = token {
        eprintln!("read your write: orders get ID --consistent-with {t}");
    }
    Ok(())
}

/// A refused request in one line: the status and the server's JSON error
/// (`code: message`), or its text when it sent no such body.
pub fn refusal(status: reqwest::StatusCode, body: &str) -> String {
    let error: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match (error["error"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
        _ if body.trim().is_empty() => format!("{status}"),
        _ => format!("{status}: {}", body.trim()),
    }
}

fn post(server: &Server, path: &str, body: Value) -> anyhow::Result<reqwest::RequestBuilder> {
    Ok(server.request(reqwest::Method::POST, path)?.json(&body))
}

/// `orders create`.
pub async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let items = a
        .items
        .iter()
        .map(|i| parse_item(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut body = json!({ "customer_id": a.customer, "items": items });
    if let (Some(name), Some(address), Some(email)) = (a.ship_name, a.ship_address, a.ship_email) {
        body["shipping"] = json!({ "name": name, "address": address, "email": email });
    }
    send(post(&a.server, "/orders", body)).await
}

/// `orders erase`: `DELETE /customers/{id}/personal-data`.
pub async fn erase(a: EraseArgs) -> anyhow::Result<()> {
    let path = format!("/customers/{}/personal-data", a.customer);
    send(a.server.request(reqwest::Method::DELETE, &path)).await
}
/// `orders pay`.
pub async fn pay(a: PayArgs) -> anyhow::Result<()> {
    let body = json!({ "amount_cents": a.amount, "payment_ref": a.payment_ref });
    send(post(&a.server, &format!("/orders/{}/pay", a.id), body)).await
}
/// `orders ship`.
pub async fn ship(a: ShipArgs) -> anyhow::Result<()> {
    let body = json!({ "carrier": a.carrier, "tracking_number": a.tracking });
    send(post(&a.server, &format!("/orders/{}/ship", a.id), body)).await
}
/// `orders deliver`.
pub async fn deliver(a: IdArgs) -> anyhow::Result<()> {
    send(post(
        &a.server,
        &format!("/orders/{}/deliver", a.id),
        json!({}),
    ))
    .await
}
/// `orders cancel`.
pub async fn cancel(a: CancelArgs) -> anyhow::Result<()> {
    send(post(
        &a.server,
        &format!("/orders/{}/cancel", a.id),
        json!({ "reason": a.reason }),
    ))
    .await
}
/// `orders get`.
pub async fn get(a: GetArgs) -> anyhow::Result<()> {
    let mut req = a
        .server
        .request(reqwest::Method::GET, &format!("/orders/{}", a.id))?;
    if let Some(t) = a.consistent_with {
        req = req.header("x-consistency-token", t);
    }
    send(Ok(req)).await
}
/// `orders list`.
pub async fn list(a: ListArgs) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(c) = a.customer {
        q.push(("customer_id", c));
    }
    if let Some(s) = a.status {
        q.push(("status", s));
    }
    if let Some(l) = a.limit {
        q.push(("limit", l.to_string()));
    }
    if let Some(x) = a.after {
        q.push(("after", x));
    }
    send(
        a.server
            .request(reqwest::Method::GET, "/orders")
            .map(|r| r.query(&q)),
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn items_parse_from_the_command_line() {
        assert_eq!(
            super::parse_item("book:2:1500").unwrap(),
            serde_json::json!({"sku": "book", "quantity": 2, "unit_price_cents": 1500})
        );
        assert!(super::parse_item("book:2").is_err());
        assert!(super::parse_item("book:x:1").is_err());
    }
}
