//! Crash tests with real processes: API, relay and projector apart, over a
//! real Kafka broker and PostgreSQL; relay and projector die by kill -9.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, random_count, wait_healthy, Cluster};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Orders accepted with a 2xx and the version each must reach.
type Accepted = Arc<Mutex<HashMap<String, i64>>>;

/// Clients that create and pay orders until told to stop; every 2xx is recorded.
fn drive(
    base: String,
    clients: usize,
    stop: watch::Receiver<bool>,
) -> (Accepted, Vec<tokio::task::JoinHandle<()>>) {
    let accepted: Accepted = Arc::default();
    let tasks = (0..clients)
        .map(|c| {
            let (accepted, base, stop) = (accepted.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0;
                while !*stop.borrow() {
                    i += 1;
                    let body = json!({"customer_id": format!("c{}", (c + i) % 7),
                        "items": [{"sku": "s", "quantity": 1 + i % 3, "unit_price_cents": 250}]});
                    let Ok(r) = http.post(format!("{base}/orders")).json(&body).send().await else {
                        continue;
                    };
                    if r.status() != 201 {
                        continue;
                    }
                    let a: serde_json::Value = r.json().await.unwrap();
                    let id = a["order_id"].as_str().unwrap().to_owned();
                    accepted.lock().unwrap().insert(id.clone(), 1);
                    if i % 2 == 0 {
                        let pay = json!({"amount_cents": 250 * (1 + i % 3), "payment_ref": "p"});
                        if let Ok(r) = http
                            .post(format!("{base}/orders/{id}/pay"))
                            .json(&pay)
                            .send()
                            .await
                        {
                            if r.status() == 200 {
                                accepted.lock().unwrap().insert(id, 2);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (accepted, tasks)
}

/// Waits until `more` orders beyond the current count have been accepted.
async fn accepted_grows_by(accepted: &Accepted, more: usize, procs: &mut [&mut common::Proc]) {
    let count = || accepted.lock().unwrap().len();
    common::grows_by(count, more, 60, "orders", procs).await;
}

/// The (group, topic) of each "partitions assigned" line of a log.
fn assigned_groups(log: &str) -> std::collections::HashSet<(String, String)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "partitions assigned")
        .map(|v| {
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (field("group"), field("topic"))
        })
        .collect()
}

/// Waits until each of `procs` logged partitions of the orders' group.
async fn wait_assigned(cluster: &Cluster, procs: &[&common::Proc]) {
    let orders_group = (format!("g-{}", cluster.topic), cluster.topic.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !procs
        .iter()
        .all(|p| assigned_groups(&p.log_text()).contains(&orders_group))
    {
        assert!(
            Instant::now() < deadline,
            "a member never got partitions:\n{}",
            procs
                .iter()
                .map(|p| p.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records the projectors dropped as already applied, from their logs.
fn duplicates_dropped(cluster: &Cluster) -> u64 {
    // Each process logs JSON lines; a batch that dropped copies says how many.
    std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|record| record["duplicates"].as_u64())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Every accepted command is in the read model exactly once: each order at
/// the version its 2xx answers promised, and no dead letters.
async fn assert_reflected_once(cluster: &Cluster, accepted: &Accepted) {
    let db = cluster.db().await;
    let versions: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT order_id, version FROM order_details")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "{} orders accepted; {} records dropped as already applied",
        accepted.len(),
        duplicates_dropped(cluster)
    );
    assert!(
        accepted.len() > 20,
        "the load produced only {} orders",
        accepted.len()
    );
    for (id, v) in &accepted {
        assert_eq!(versions.get(id), Some(v), "order {id}");
    }
    assert_eq!(
        versions.len(),
        accepted.len(),
        "the read model has orders nobody was told about"
    );
    let dead = common::dead_letters_in(&db).await;
    assert_eq!(dead, 0, "no record may be dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_relay_and_projector_loses_nothing_and_counts_nothing_twice() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    // A small apply delay widens the window between consuming and committing.
    let slow = [("ORDERS_PROJECTOR_DELAY_MS", "40".to_owned())];
    let mut relay = cluster.start("relay-0", "relay", None, &[]);
    let mut projector = cluster.start("projector-0", "projector", None, &slow);
    let (stop_tx, stop) = watch::channel(false);
    let (accepted, clients) = drive(base.clone(), 4, stop);
    // Kills at points of the load rather than of the clock: after a random
    // number of further orders each time.
    for n in 1..=3 {
        accepted_grows_by(
            &accepted,
            random_count(10, 40),
            &mut [&mut api, &mut relay, &mut projector],
        )
        .await;
        relay.kill9();
        relay = cluster.start(&format!("relay-{n}"), "relay", None, &[]);
    }
    for n in 1..=3 {
        accepted_grows_by(
            &accepted,
            random_count(10, 40),
            &mut [&mut api, &mut relay, &mut projector],
        )
        .await;
        projector.kill9();
        projector = cluster.start(&format!("projector-{n}"), "projector", None, &slow);
    }
    accepted_grows_by(&accepted, 10, &mut [&mut api, &mut relay, &mut projector]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    cluster
        .wait_converged(120, &mut [&mut api, &mut relay, &mut projector])
        .await;
    assert_reflected_once(&cluster, &accepted).await;
    // Make delivery repeat for certain: a relay that starts from a checkpoint
    // of 0 sends every event again, so the topic holds each event twice; the
    // projector must drop every copy.
    let db = cluster.db().await;
    let events = common::events_in(&db).await;
    let before = duplicates_dropped(&cluster);
    relay.kill9();
    let store = cqrs_sql::SqlEventStore::open(db.clone()).await.unwrap();
    store.republish_from(0).await.unwrap();
    relay = cluster.start("relay-again", "relay", None, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while duplicates_dropped(&cluster) < before + events as u64 {
        assert!(
            Instant::now() < deadline,
            "the projector dropped {} of {events} redelivered records",
            duplicates_dropped(&cluster) - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .wait_converged(60, &mut [&mut api, &mut relay, &mut projector])
        .await;
    assert_reflected_once(&cluster, &accepted).await;
    eprintln!(
        "all {events} events delivered a second time: every copy dropped, the read model unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_relay_takes_over_within_five_seconds() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,projector", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let mut leader = cluster.start("relay-a", "relay", None, &[]);
    let http = reqwest::Client::new();
    let create = || async {
        let a = common::create_order_at(&http, &base, "c", 1).await;
        a["order_id"].as_str().unwrap().to_owned()
    };
    let store = cqrs_sql::SqlEventStore::open(cluster.db().await)
        .await
        .unwrap();
    let published = |id: String| {
        let store = store.clone();
        async move {
            // Behind the relay's checkpoint: its delivery report came back.
            let events = cqrs_sql::EventStore::load(&store, &id).await.unwrap();
            let checkpoint = store.relay_checkpoint().await.unwrap();
            events.len() == 1 && events[0].position <= checkpoint
        }
    };
    let first = create().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !published(first.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the first relay never published:\n{}",
            leader.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut standby = cluster.start("relay-b", "relay", None, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !standby.log_text().contains("relay standing by") {
        assert!(
            Instant::now() < deadline,
            "the standby never stood by:\n{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leader.kill9();
    let killed = Instant::now();
    let second = create().await;
    while !published(second.clone()).await {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the standby did not take over within 5 s:\n{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(standby.log_text().contains("relay is the leader"));
    cluster
        .wait_converged(60, &mut [&mut api, &mut standby])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projectors_joining_and_leaving_a_group_apply_everything_once_in_order() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let slow = [("ORDERS_PROJECTOR_DELAY_MS", "20".to_owned())];
    let mut p1 = cluster.start("projector-1", "projector", None, &slow);
    let mut p2 = cluster.start("projector-2", "projector", None, &slow);
    let (stop_tx, stop) = watch::channel(false);
    let (accepted, clients) = drive(base.clone(), 4, stop);
    accepted_grows_by(&accepted, 40, &mut [&mut api, &mut p1, &mut p2]).await;
    let mut p3 = cluster.start("projector-3", "projector", None, &slow);
    // The newcomer joins the group mid-stream...
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p3.log_text().contains("partitions assigned") {
        assert!(
            Instant::now() < deadline,
            "projector-3 never got partitions:\n{}",
            p3.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    accepted_grows_by(&accepted, 40, &mut [&mut api, &mut p1, &mut p2, &mut p3]).await;
    // ...and one leaves mid-stream.
    assert!(
        p1.terminate().success(),
        "a leaving projector stops cleanly:\n{}",
        p1.log_text()
    );
    accepted_grows_by(&accepted, 40, &mut [&mut api, &mut p2, &mut p3]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    cluster
        .wait_converged(120, &mut [&mut api, &mut p2, &mut p3])
        .await;
    assert_reflected_once(&cluster, &accepted).await;
    for p in [&p2, &p3] {
        assert!(
            p.log_text().contains("partitions assigned"),
            "{} took part:\n{}",
            p.name,
            p.log_text()
        );
    }
    // Every consumer's lines name its group and topic, and `--kafka-group`
    // names the projectors' group and prefixes the saga's and the
    // inventory's.
    let g = format!("g-{}", cluster.topic);
    let inventory_topic = cluster.topic.replace(".events", ".inventory.events");
    let assigned = assigned_groups(&p2.log_text());
    for (group, topic) in [
        (g.clone(), cluster.topic.clone()),
        (format!("{g}.order-saga"), cluster.topic.clone()),
        (format!("{g}.inventory"), inventory_topic),
    ] {
        assert!(
            assigned.contains(&(group.clone(), topic.clone())),
            "no \"partitions assigned\" line of group {group} on {topic} in {assigned:?}"
        );
    }
}

/// Creates one order and answers how long until a read with its token saw
/// it, or None when `limit` (at most the API's 30 s) passed first.
async fn queryable_within(base: &str, limit: Duration) -> Option<Duration> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let body = json!({"customer_id": "c-static",
        "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100}]});
    let created = http
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let token = created.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = created.json::<serde_json::Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = http
        .get(format!("{base}/orders/{id}?wait_ms={}", limit.as_millis()))
        .header("x-consistency-token", token)
        .send()
        .await
        .unwrap();
    if read.status() != 200 {
        eprintln!(
            "read answered {}: {}",
            read.status(),
            read.text().await.unwrap_or_default()
        );
        return None;
    }
    Some(started.elapsed())
}

/// The instance id a process said it joins its groups with.
fn instance_id_of(log: &str) -> Option<String> {
    let re = regex::Regex::new(r#""instance_id":"([^"]+)""#).unwrap();
    re.captures_iter(log).last().map(|c| c[1].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_and_restarted_with_the_same_command_line_resumes_within_five_seconds() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    // Kafka's default session: a dynamic member restarted after a kill -9
    // would wait out its dead self's 45 s before getting partitions. No id
    // is given: the process derives one from its command line.
    let session_ms = 45_000;
    let mut p = cluster.start_with_session("projector", "projector", None, &[], session_ms);
    assert!(
        queryable_within(&base, Duration::from_secs(30))
            .await
            .is_some(),
        "the first projector never applied an order:\n{}",
        p.log_text()
    );
    let first_id = instance_id_of(&p.log_text());
    p.kill9();
    let restarted = Instant::now();
    let mut p = cluster.start_with_session("projector", "projector", None, &[], session_ms);
    let seen = queryable_within(&base, Duration::from_secs(30)).await;
    let resumed = restarted.elapsed();
    eprintln!("restarted alike, queryable again after {resumed:?}");
    assert!(
        seen.is_some() && resumed < Duration::from_secs(5),
        "restarted alike, the projector resumed after {resumed:?} (an order written at once after the restart seen after {seen:?}):\n{}",
        p.log_text()
    );
    let again = instance_id_of(&p.log_text());
    assert!(
        first_id.is_some() && first_id == again,
        "the restart derived {again:?}, the first start {first_id:?}"
    );
    // A static member stops cleanly too (it once hung in the consumer's
    // close): within the shutdown timeout and the runtime's exit grace.
    let stopping = Instant::now();
    assert!(p.terminate().success(), "{}", p.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "the static member took {:?} to stop",
        stopping.elapsed()
    );
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_given_one_instance_id_the_fenced_one_goes_on_as_a_dynamic_member() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let twin = [("ORDERS_KAFKA_INSTANCE_ID", "twin".to_owned())];
    let mut first = cluster.start("projector-1", "projector", None, &twin);
    wait_assigned(&cluster, &[&first]).await;
    let mut second = cluster.start("projector-2", "projector", None, &twin);
    // The broker fences the older member; it says so, naming the id, and
    // goes on as a dynamic member (librdkafka fences a member by its own
    // new incarnation too, after a coordinator moved: never a reason to
    // stop the process).
    let fenced = "fenced as a static member: going on as a dynamic member";
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let (a, b) = (first.log_text(), second.log_text());
        if let Some(log) = [a, b].into_iter().find(|l| l.contains(fenced)) {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no member was fenced:\n{}\n{}",
            first.log_text(),
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        log.contains("\\\"twin\\\""),
        "the warning names no id:\n{log}"
    );
    // Both run on, and every partition is applied.
    for _ in 0..12 {
        assert!(
            queryable_within(&base, Duration::from_secs(30))
                .await
                .is_some(),
            "an order was never applied after the fence:\n{}\n{}",
            first.log_text(),
            second.log_text()
        );
    }
    assert!(first.alive() && second.alive(), "a fenced member stopped");
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_member_killed_for_good_gives_its_partitions_up_after_the_session_timeout() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let member = |id: &str| [("ORDERS_KAFKA_INSTANCE_ID", id.to_owned())];
    let mut a = cluster.start_with_session("projector-a", "projector", None, &member("a"), 3000);
    let b = cluster.start_with_session("projector-b", "projector", None, &member("b"), 3000);
    wait_assigned(&cluster, &[&a, &b]).await;
    let assigned_before = b.log_text().matches("partitions assigned").count();
    a.kill9();
    let killed = Instant::now();
    // Orders land on every partition, the dead member's too: each is
    // applied once the group has moved them (session timeout 3 s).
    for _ in 0..12 {
        assert!(
            queryable_within(&base, Duration::from_secs(30))
                .await
                .is_some(),
            "an order was never applied after the kill:\n{}",
            b.log_text()
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "the dead member's partitions moved after {:?}",
        killed.elapsed()
    );
    assert!(
        b.log_text().matches("partitions assigned").count() > assigned_before,
        "the survivor was never given more partitions:\n{}",
        b.log_text()
    );
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_write_database_on_the_same_topic_is_refused_naming_both_stores() {
    let ours = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = ours.start("api", "api,relay,projector", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    assert!(
        queryable_within(&base, Duration::from_secs(30))
            .await
            .is_some(),
        "{}",
        api.log_text()
    );
    // A newcomer's run, its own write DB, pointed at the topic in use.
    let theirs = ours.beside().await;
    let mut relay = theirs.start("relay", "relay", None, &[]);
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the second store's relay ran on:\n{}", relay.log_text()));
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    let (a, b) = (ours.store_id().await, theirs.store_id().await);
    assert!(
        log.contains(&a) && log.contains(&b) && log.contains(&ours.topic),
        "the refusal names neither store ({a}, {b}) or the topic:\n{log}"
    );
    // The owner goes on.
    assert!(
        queryable_within(&base, Duration::from_secs(30))
            .await
            .is_some(),
        "{}",
        api.log_text()
    );
}
