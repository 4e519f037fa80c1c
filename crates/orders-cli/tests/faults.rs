//! The fault suite: real faults under a steady command load, against real
//! `orders` processes (API + relay in one, a projector in another). Each
//! test owns the service it breaks (a private Kafka node or cluster, a
//! private PostgreSQL, a TCP proxy), so it disturbs no other test.
//!
//! After each fault: every command sent during it got a 2xx or a clear 503
//! (JSON, `Retry-After`), every 2xx is in the read model exactly once, the
//! read models equal the fold of the write side, and the test prints the
//! commands accepted during the fault, the time to recover and the time to
//! drain the lag.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Cluster, Proc};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::kafka::KafkaCluster;
use tokio::sync::watch;

/// Clients sending commands.
const CLIENTS: usize = 4;
/// How long each fault lasts.
const FAULT: Duration = Duration::from_secs(10);

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// Order -> the highest version a 2xx acknowledged.
    acked: HashMap<String, i64>,
    /// Order -> the highest version a command may have written (a 503 may
    /// hide a commit: the answer was lost, not the write).
    attempted: HashMap<String, i64>,
    /// Creates answered 503 or cut off: each may or may not exist.
    unsure_creates: usize,
    /// (sent at, 2xx?) of every command answered 2xx or a clear 503.
    answers: Vec<(Instant, bool)>,
    /// Anything else: 5xx other than 503, a 503 without the JSON error and
    /// Retry-After, no answer within the request timeout.
    unclear: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// 2xx, a clear 503, or an unclear answer (described).
async fn classify(r: Result<reqwest::Response, reqwest::Error>) -> Result<Option<Value>, String> {
    let r = r.map_err(|e| format!("no answer: {e}"))?;
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    match status {
        200..=299 => Ok(Some(body)),
        503 if retry && body["error"].is_string() => Ok(None),
        _ => Err(format!("{status} {body}")),
    }
}

/// Clients that create orders and pay every other one until told to stop.
fn drive(
    base: String,
    ledger: Shared,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let (base, ledger, stop) = (base.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("client");
                let mut i = 0u64;
                while !*stop.borrow() {
                    i += 1;
                    let price = 100 + (i % 7) as i64;
                    let body = json!({"customer_id": format!("c{}", (c as u64 + i) % 5),
                        "items": [{"sku": "s", "quantity": 1, "unit_price_cents": price}]});
                    let sent = Instant::now();
                    let answer =
                        classify(http.post(format!("{base}/orders")).json(&body).send().await)
                            .await;
                    let id = {
                        let mut l = ledger.lock().expect("ledger");
                        match answer {
                            Ok(Some(a)) => {
                                l.answers.push((sent, true));
                                let id = a["order_id"].as_str().unwrap_or_default().to_owned();
                                l.acked.insert(id.clone(), 1);
                                l.attempted.insert(id.clone(), 1);
                                Some(id)
                            }
                            Ok(None) => {
                                l.answers.push((sent, false));
                                l.unsure_creates += 1;
                                None
                            }
                            Err(e) => {
                                l.unclear.push(format!("create: {e}"));
                                l.unsure_creates += 1;
                                None
                            }
                        }
                    };
                    let Some(id) = id.filter(|_| i.is_multiple_of(2)) else {
                        if answer_was_refused(&ledger) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    };
                    ledger
                        .lock()
                        .expect("ledger")
                        .attempted
                        .insert(id.clone(), 2);
                    let pay = json!({"amount_cents": price, "payment_ref": "p"});
                    let sent = Instant::now();
                    let answer = classify(
                        http.post(format!("{base}/orders/{id}/pay"))
                            .json(&pay)
                            .send()
                            .await,
                    )
                    .await;
                    let mut l = ledger.lock().expect("ledger");
                    match answer {
                        Ok(Some(_)) => {
                            l.answers.push((sent, true));
                            l.acked.insert(id, 2);
                        }
                        Ok(None) => l.answers.push((sent, false)),
                        Err(e) => l.unclear.push(format!("pay {id}: {e}")),
                    }
                }
            })
        })
        .collect()
}

/// Whether the last answer was a refusal (then clients pause a moment
/// rather than spin against a service that is down).
fn answer_was_refused(ledger: &Shared) -> bool {
    ledger
        .lock()
        .map(|l| l.answers.last().is_some_and(|(_, ok)| !ok))
        .unwrap_or(false)
}

/// Waits until `more` further commands were answered 2xx.
async fn accepted_grows_by(ledger: &Shared, more: usize, procs: &mut [&mut Proc]) {
    let ok = || {
        let l = ledger.lock().expect("ledger");
        l.answers.iter().filter(|(_, ok)| *ok).count()
    };
    common::grows_by(ok, more, 90, "accepted commands", procs).await;
}

/// What became of one probe order.
enum Probe {
    /// Not accepted (503, or no answer).
    Refused,
    /// Accepted, then read back through its token.
    Queryable,
    /// Accepted, but not readable through its token by the deadline.
    Stuck,
}

/// Creates one order and waits (up to `deadline`) until its token reads it.
async fn probe(http: &reqwest::Client, base: &str, deadline: Instant) -> Probe {
    let body = json!({"customer_id": "probe", "items": [{"sku": "p", "quantity": 1, "unit_price_cents": 1}]});
    let accepted = match http.post(format!("{base}/orders")).json(&body).send().await {
        Ok(r) if r.status() == 201 => r.json::<Value>().await.unwrap_or_default(),
        _ => return Probe::Refused,
    };
    let id = accepted["order_id"].as_str().unwrap_or_default();
    let token = accepted["consistency_token"].as_str().unwrap_or_default();
    // Waits for the write, however far behind the read side is.
    while Instant::now() < deadline {
        let read = http
            .get(format!("{base}/orders/{id}?wait_ms=5000"))
            .header("x-consistency-token", token)
            .send()
            .await;
        if read.is_ok_and(|r| r.status() == 200) {
            return Probe::Queryable;
        }
    }
    Probe::Stuck
}

fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// From the end of the fault until a new order is queryable through its
/// token: the whole path works again.
async fn time_to_recover(base: &str, restored: Instant, procs: &mut [&mut Proc]) -> Duration {
    let http = probe_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match probe(&http, base, deadline).await {
            Probe::Queryable => return restored.elapsed(),
            Probe::Refused if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => panic!(
                "no command became queryable within 120 s of the end of the fault\n{}",
                common::logs_of(procs)
            ),
        }
    }
}

/// Sends one order at a time until `until` and waits for each to become
/// queryable; the longest wait of an accepted one (None: none accepted).
async fn slowest_probe(base: String, until: Instant) -> Option<Duration> {
    let http = probe_client();
    let mut slowest: Option<Duration> = None;
    while Instant::now() < until {
        let sent = Instant::now();
        match probe(&http, &base, sent + Duration::from_secs(120)).await {
            Probe::Queryable => {
                slowest = Some(slowest.map_or(sent.elapsed(), |s| s.max(sent.elapsed())))
            }
            Probe::Refused => tokio::time::sleep(Duration::from_millis(200)).await,
            Probe::Stuck => {
                panic!("an order accepted during the fault was not queryable within 120 s")
            }
        }
    }
    slowest
}

/// Every 2xx is in the read model once, at (at least) the version it
/// acknowledged and at most the version any command may have written;
/// orders nobody was told about come only from creates whose answer was lost.
async fn assert_exactly_once(cluster: &Cluster, ledger: &Shared) {
    let db = cluster.db().await;
    let versions: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT order_id, version FROM order_details WHERE customer_id <> 'probe'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read model")
    .into_iter()
    .collect();
    {
        let l = ledger.lock().expect("ledger");
        for (id, acked) in &l.acked {
            let v = versions.get(id).copied();
            let most = l.attempted.get(id).copied().unwrap_or(*acked);
            assert!(
                v.is_some_and(|v| v >= *acked && v <= most),
                "order {id}: acknowledged version {acked}, read model has {v:?}"
            );
        }
        let unknown = versions
            .keys()
            .filter(|k| !l.acked.contains_key(*k))
            .count();
        assert!(
            unknown <= l.unsure_creates,
            "{unknown} orders nobody was told about, but only {} creates went unanswered",
            l.unsure_creates
        );
    }
    let dead = common::dead_letters_in(&db).await;
    assert_eq!(dead, 0, "nothing may be dead-lettered");
}

/// A running fault scenario: the service, its load and its ledger.
struct Scenario {
    name: &'static str,
    cluster: Cluster,
    base: String,
    api: Proc,
    projector: Proc,
    ledger: Shared,
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Scenario {
    /// Starts API + relay and a projector over `database_url` and `brokers`,
    /// and the load; returns once commands flow end to end.
    async fn start(
        name: &'static str,
        database_url: String,
        brokers: String,
        env: &[(&str, String)],
    ) -> Scenario {
        let cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url,
            topic: test_support::unique_topic(),
            brokers,
        };
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut api = cluster.start("api", "api,relay", Some(port), env);
        wait_healthy(&base, &mut api).await;
        let projector = cluster.start("projector", "projector", None, env);
        let ledger = Shared::default();
        let (stop, stop_rx) = watch::channel(false);
        let clients = drive(base.clone(), ledger.clone(), stop_rx);
        let mut s = Scenario {
            name,
            cluster,
            base,
            api,
            projector,
            ledger,
            stop,
            clients,
        };
        let mut procs = [&mut s.api, &mut s.projector];
        accepted_grows_by(&s.ledger, 40, &mut procs).await;
        time_to_recover(&s.base, Instant::now(), &mut procs).await;
        s
    }

    /// Runs `inject`, keeps the load on for the fault's length, runs
    /// `restore`; then measures recovery and drain and checks everything.
    async fn fault(mut self, inject: impl FnOnce(), restore: impl FnOnce()) {
        let began = Instant::now();
        inject();
        let probe = tokio::spawn(slowest_probe(self.base.clone(), began + FAULT));
        tokio::time::sleep(FAULT).await;
        restore();
        let restored = Instant::now();
        let mut procs = [&mut self.api, &mut self.projector];
        let recovered = time_to_recover(&self.base, restored, &mut procs).await;
        accepted_grows_by(&self.ledger, 20, &mut procs).await;
        self.stop.send_replace(true);
        for c in self.clients {
            c.await.expect("client");
        }
        self.cluster.wait_converged(180, &mut procs).await;
        let drained = restored.elapsed();
        let slowest = probe.await.expect("probe");
        assert_exactly_once(&self.cluster, &self.ledger).await;
        let l = self.ledger.lock().expect("ledger");
        assert!(
            l.unclear.is_empty(),
            "answers that were neither 2xx nor a clear 503: {:?}",
            &l.unclear[..l.unclear.len().min(10)]
        );
        let during: Vec<bool> = l
            .answers
            .iter()
            .filter(|(t, _)| *t >= began && *t < restored)
            .map(|(_, ok)| *ok)
            .collect();
        let accepted = during.iter().filter(|ok| **ok).count();
        eprintln!(
            "fault {}: {} commands during the fault ({accepted} accepted, {} answered 503); \
             {}; \
             recovered {:.1} s after it ended (a new command queryable), lag drained after {:.1} s; \
             {} orders acknowledged in all, each in the read model once, read models equal the fold",
            self.name,
            during.len(),
            during.len() - accepted,
            slowest.map_or("every probe command sent during it was refused (503)".to_owned(), |d| format!(
                "a command sent during it took up to {:.1} s to become queryable",
                d.as_secs_f64()
            )),
            recovered.as_secs_f64(),
            drained.as_secs_f64(),
            l.acked.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_kafka_stopped_for_ten_seconds_under_load() {
    let kafka = Arc::new(Mutex::new(KafkaCluster::start(1, |_| None)));
    let brokers = kafka.lock().unwrap().bootstrap();
    let s = Scenario::start(
        "kafka broker stopped 10 s",
        test_support::fresh_postgres_url().await,
        brokers,
        &[],
    )
    .await;
    let (k1, k2) = (kafka.clone(), kafka.clone());
    s.fault(
        move || k1.lock().unwrap().nodes[0].kill9(),
        move || {
            let mut k = k2.lock().unwrap();
            k.nodes[0].start();
            let port = k.nodes[0].port;
            k.wait_serving(port, Duration::from_secs(60));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_postgres_restarted_under_load() {
    let pg = Arc::new(test_support::postgres::PrivatePostgres::start());
    let s = Scenario::start(
        "postgresql restarted",
        pg.url(),
        test_support::kafka_brokers(),
        &[],
    )
    .await;
    let (p1, p2) = (pg.clone(), pg.clone());
    s.fault(move || p1.down(), move || p2.up()).await;
}

/// The broker that leads partition 0 of `topic`.
fn leader_of_partition_zero(bootstrap: &str, topic: &str) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let meta = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    meta.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == 0)
        .expect("partition 0")
        .leader()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_partition_leader_killed_in_a_three_broker_cluster() {
    let kafka = Arc::new(Mutex::new(KafkaCluster::start(3, |_| None)));
    let brokers = kafka.lock().unwrap().bootstrap();
    let env = [("ORDERS_KAFKA_REPLICATION", "3".to_owned())];
    let s = Scenario::start(
        "partition leader killed -9 (3 brokers, RF 3, min ISR 2)",
        test_support::fresh_postgres_url().await,
        brokers.clone(),
        &env,
    )
    .await;
    let leader = leader_of_partition_zero(&brokers, &s.cluster.topic);
    let index = kafka
        .lock()
        .unwrap()
        .nodes
        .iter()
        .position(|n| n.id as i32 == leader)
        .expect("leader node");
    eprintln!("killing broker {leader}, the leader of partition 0");
    let (k1, k2) = (kafka.clone(), kafka.clone());
    s.fault(
        move || k1.lock().unwrap().nodes[index].kill9(),
        move || {
            let mut k = k2.lock().unwrap();
            k.nodes[index].start();
            let port = k.nodes[index].port;
            k.wait_serving(port, Duration::from_secs(60));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_link_to_kafka_cut_for_ten_seconds_through_a_proxy() {
    let proxy_port = test_support::stable_port();
    let kafka = KafkaCluster::start(1, |_| Some(proxy_port));
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", kafka.nodes[0].port)
        .parse()
        .expect("addr");
    let proxy = Arc::new(test_support::proxy::TcpProxy::start_on(proxy_port, target).await);
    let s = Scenario::start(
        "link to kafka cut 10 s",
        test_support::fresh_postgres_url().await,
        format!("127.0.0.1:{proxy_port}"),
        &[],
    )
    .await;
    let (p1, p2) = (proxy.clone(), proxy.clone());
    s.fault(move || p1.cut(), move || p2.restore()).await;
    drop(kafka);
}
