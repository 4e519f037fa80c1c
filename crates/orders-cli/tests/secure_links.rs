//! Every link that leaves the process encrypted at once: the real binary
//! serves HTTPS, keeps its write and read databases on PostgreSQL over TLS
//! with the certificate verified (verify-full), and reaches Kafka over
//! SASL_SSL (SCRAM-SHA-512). A command goes the whole way, and no credential
//! shows up in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, Proc};
use cqrs_http::auth::{mint_hs256, Mint, Secret};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "secure-links-test-secret-0123456789";

fn operator_token() -> String {
    let secret: Secret = JWT_SECRET.parse().unwrap();
    let roles = ["operator".to_owned()];
    let mint = Mint {
        sub: "ops",
        roles: &roles,
        ttl: Duration::from_secs(600),
        issuer: None,
        audience: None,
    };
    mint_hs256(&secret, &mint).unwrap()
}

/// The URL of a fresh database, to be reached over TLS with the server's
/// certificate checked against the local CA and its name.
async fn verified_url(ca: &std::path::Path) -> (String, String) {
    let url = test_support::fresh_postgres_url().await;
    let name = url.rsplit('/').next().unwrap().to_owned();
    let tls = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    (tls, name)
}

fn https_client(ca: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn wait_https(http: &reqwest::Client, base: &str, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(proc.alive(), "the server exited:\n{}", proc.log_text());
        assert!(
            Instant::now() < deadline,
            "no HTTPS answer within 60 s:\n{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_travels_over_https_postgres_tls_and_kafka_sasl_ssl() {
    let tls = test_support::tls();
    let (brokers, user, password) = test_support::kafka_sasl();
    let (write_url, write_db) = verified_url(&tls.ca).await;
    let (read_url, read_db) = verified_url(&tls.ca).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let topic = test_support::unique_topic();
    let kafka_properties = [
        "security.protocol=SASL_SSL".to_owned(),
        "sasl.mechanisms=SCRAM-SHA-512".to_owned(),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={}", tls.ca.display()),
    ];
    let args: Vec<String> = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--tls-cert".to_owned(),
        tls.cert.display().to_string(),
        "--tls-key".to_owned(),
        tls.key.display().to_string(),
        "--database-url".to_owned(),
        write_url.clone(),
        "--read-database-url".to_owned(),
        read_url.clone(),
        "--kafka-brokers".to_owned(),
        brokers.clone(),
        "--kafka-topic".to_owned(),
        topic.clone(),
        "--kafka-group".to_owned(),
        format!("g-{topic}"),
    ]
    .into_iter()
    .collect();
    let env = [
        ("ORDERS_JWT_HS256_SECRET", JWT_SECRET.to_owned()),
        ("ORDERS_KAFKA_PROPERTIES", kafka_properties.join(",")),
        ("ORDERS_KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        (
            "RUST_LOG",
            "trace,h2=info,rustls=info,sqlx=info,tokio=info,runtime=info".to_owned(),
        ),
    ];
    let mut server = Proc::serve("secure", dir.path(), &args, &env);
    let base = format!("https://127.0.0.1:{port}");
    let http = https_client(&tls.ca);
    wait_https(&http, &base, &mut server).await;
    let token = operator_token();

    // HTTPS only: the same port does not speak cleartext HTTP.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "cleartext was served"
    );

    let body = json!({ "customer_id": "alice",
        "items": [{ "sku": "book", "quantity": 2, "unit_price_cents": 1500 }] });
    let created: Value = http
        .post(format!("{base}/orders"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["order_id"].as_str().expect("created").to_owned();
    let consistency = created["consistency_token"].as_str().unwrap().to_owned();
    // Read back through the projector, which consumed it from Kafka.
    let res = http
        .get(format!(
            "{base}/orders/{id}?consistent_with={consistency}&wait_ms=30000"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let order: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{order}\n{}", server.log_text());
    assert_eq!(order["total_cents"], 3000);
    let command = created["command_id"].as_str().unwrap();
    let trace: Value = http
        .get(format!("{base}/commands/{command}/trace"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let consumed_from = trace.to_string();
    assert!(
        consumed_from.contains(&format!("{topic}/")),
        "consumed from Kafka: {trace}"
    );

    // Every connection the server holds to either database is encrypted.
    let admin = sqlx::PgPool::connect(&test_support::postgres_admin_url())
        .await
        .unwrap();
    let (encrypted, clear): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE s.ssl), COUNT(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname IN ($1, $2)",
    )
    .bind(&write_db)
    .bind(&read_db)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(
        encrypted > 0 && clear == 0,
        "{encrypted} encrypted, {clear} in the clear"
    );

    // A stream ticket over HTTPS: a Secure cookie, and never the token.
    let res = http
        .post(format!("{base}/stream/ticket"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        !cookie.contains(token.as_str()),
        "the cookie echoes the token"
    );
    let ticket = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.strip_prefix("orders_stream="))
        .unwrap()
        .to_owned();
    // A token and the ticket in query strings, where no route takes them:
    // refused, and not written to the (debug) log either.
    for query in [format!("access_token={token}"), format!("x={ticket}")] {
        let res = http
            .get(format!("{base}/orders?{query}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
    }

    // Nor in what the server shows about itself.
    let mut shown = String::new();
    for path in ["/metrics", "/readyz"] {
        let res = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        shown.push_str(&res.text().await.unwrap());
    }
    assert!(shown.contains("cqrs_"), "metrics were served: {shown}");
    for secret in [password.as_str(), JWT_SECRET, token.as_str()] {
        assert!(
            !shown.contains(secret),
            "a credential is in /metrics or /readyz"
        );
    }
    server.terminate();
    let logged = server.log_text();
    for (what, secret) in [
        ("the SASL password", password.as_str()),
        ("the JWT secret", JWT_SECRET),
        ("the bearer token", token.as_str()),
        ("the stream ticket", ticket.as_str()),
    ] {
        assert!(!logged.contains(secret), "{what} is in the log");
    }
    assert!(logged.contains(r#""scheme":"https""#), "{logged}");
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_server_its_ca_did_not_sign() {
    sqlx::any::install_default_drivers();
    let url = test_support::fresh_postgres_url().await;
    // The webpki roots do not include the local CA: verification must fail.
    let unverifiable = format!("{url}?sslmode=verify-full");
    let refused = cqrs_sql::Db::connect(&unverifiable, &cqrs_sql::DbOptions::default()).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!why.is_empty(), "connected without a trusted certificate");
    let tls = test_support::tls();
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", tls.ca.display());
    cqrs_sql::Db::connect(&verified, &cqrs_sql::DbOptions::default())
        .await
        .expect("the local CA verifies the server");
}

#[tokio::test]
async fn kafka_sasl_plain_and_scram_take_the_right_password_only() {
    let tls = test_support::tls();
    let (brokers, user, password) = test_support::kafka_sasl();
    let config = |mechanism: &str, password: &str| cqrs_kafka::KafkaConfig {
        brokers: brokers.clone(),
        topic: test_support::unique_topic(),
        partitions: 1,
        replication: 1,
        properties: [
            ("security.protocol", "SASL_SSL".to_owned()),
            ("sasl.mechanisms", mechanism.to_owned()),
            ("sasl.username", user.clone()),
            ("sasl.password", password.to_owned()),
            ("ssl.ca.location", tls.ca.display().to_string()),
        ]
        .into_iter()
        .collect(),
    };
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let good = config(mechanism, &password);
        tokio::time::timeout(Duration::from_secs(30), cqrs_kafka::ensure_topics(&good))
            .await
            .unwrap_or_else(|_| panic!("{mechanism}: no answer"))
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        let bad = config(mechanism, "not-the-password");
        let refused =
            tokio::time::timeout(Duration::from_secs(8), cqrs_kafka::ensure_topics(&bad)).await;
        assert!(
            !matches!(refused, Ok(Ok(_))),
            "{mechanism} took a wrong password"
        );
        assert!(
            !format!("{:?}", bad.properties).contains("not-the-password"),
            "properties print their password"
        );
    }
}

/// A CA of its own and a certificate for 127.0.0.1 it signed, made with
/// openssl: (ca, cert, key).
fn issued(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let file = |ext: &str| dir.join(format!("{name}.{ext}"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={name} CA"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    [file("pem").with_file_name(ca), file("pem"), file("key")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_in_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let [old_ca, old_cert, old_key] = issued(dir.path(), "old");
    let [new_ca, new_cert, new_key] = issued(dir.path(), "new");
    let (cert, key) = (
        dir.path().join("serving.pem"),
        dir.path().join("serving.key"),
    );
    std::fs::copy(&old_cert, &cert).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let port = free_port();
    let args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let mut server = Proc::serve("renew", dir.path(), &args, &[]);
    let base = format!("https://127.0.0.1:{port}");
    wait_https(&https_client(&old_ca), &base, &mut server).await;
    // A new client each time: a pooled connection keeps the certificate of
    // its handshake, as it should.
    let healthy = |ca: &std::path::Path| {
        let (client, url) = (https_client(ca), format!("{base}/healthz"));
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    };
    assert!(
        !healthy(&new_ca).await,
        "the new certificate is not served yet"
    );
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    server.signal_hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&new_ca).await {
        assert!(
            Instant::now() < deadline,
            "not swapped after SIGHUP:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!healthy(&old_ca).await, "the old certificate is gone");
    // A broken file on the next SIGHUP keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal_hup();
    let logged = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("TLS certificate not reloaded") {
        assert!(Instant::now() < logged, "the failed reload was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy(&new_ca).await, "a broken file took the server down");
    assert!(server.alive());
}
