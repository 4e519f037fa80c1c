//! `orders-bench append`: the append alone, through each PostgreSQL driver
//! on the same SQL, beside pgbench's one-row insert. Issue 22 asked which
//! wins: sqlx's `Any` pool (what the store runs), sqlx's native `PgPool`,
//! or tokio-postgres with the transaction's statements pipelined (sent
//! without waiting for each answer). Each variant appends one event of a
//! new aggregate per transaction from `concurrency` tasks, with the
//! statements of [`AppendParts`]; the store's own path (group commit) runs
//! beside them. Besides appends/s it reports the CPU each append cost this
//! process and the whole machine (PostgreSQL's backends included), from
//! `/proc`.

use crate::cpu::{MachineCpu, OwnCpu};
use crate::load::{bar, drop_scratch, machine, scratch_postgres, Percentiles};
use crate::pg::{insert_tps, Pgbench};
use anyhow::Context;
use cqrs_core::{EventMetadata, NewEvent};
use cqrs_sql::store::AppendParts;
use cqrs_sql::{AppendRequest, Db, DbOptions, EventStore, SqlEventStore};
use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One variant's figures.
#[derive(Debug, serde::Serialize)]
pub struct Variant {
    /// What ran.
    pub name: String,
    /// Appends (or pgbench transactions) per second.
    pub per_sec: f64,
    /// Latency of one append, µs (none for pgbench).
    pub latency_us: Option<Percentiles>,
    /// CPU of this process per append, µs.
    pub own_cpu_us: Option<f64>,
    /// CPU of the whole machine per append, µs.
    pub machine_cpu_us: f64,
}

/// Runs every variant on a scratch database of `url` and prints the table.
pub async fn run(
    url: &str,
    appends: usize,
    concurrency: usize,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let (scratch, name) = scratch_postgres(url).await?;
    let result = variants(&scratch, appends, concurrency).await;
    drop_scratch(url, &name).await;
    let variants = result?;
    println!("{}", table(&variants));
    std::fs::create_dir_all(out)?;
    let file = out.join(format!(
        "bench-append-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let doc = serde_json::json!({
        "appends": appends,
        "concurrency": concurrency,
        "variants": variants,
        "machine": machine(),
    });
    std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", file.display());
    Ok(())
}

async fn variants(url: &str, n: usize, clients: usize) -> anyhow::Result<Vec<Variant>> {
    let db = Db::connect(url, &DbOptions::default()).await?;
    let parts = AppendParts::for_dialect(db.dialect);
    let store = SqlEventStore::open(db).await?;
    let mut out = Vec::new();
    // Each variant appends new aggregates of its own (`<tag>-<i>`).
    let shipped = {
        let store = store.clone();
        timed("store: group commit, sqlx Any", n, clients, move |i| {
            let store = store.clone();
            async move {
                store.append(request("store", i)).await?;
                Ok(())
            }
        })
        .await?
    };
    out.push(shipped);
    let any = sqlx::any::AnyPoolOptions::new()
        .max_connections(clients as u32)
        .connect(url)
        .await?;
    out.push(one_tx_each("one tx each, sqlx Any pool", "any", any, &parts, n, clients).await?);
    let native = sqlx::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .connect(url)
        .await?;
    out.push(
        one_tx_each(
            "one tx each, sqlx PgPool (native)",
            "native",
            native,
            &parts,
            n,
            clients,
        )
        .await?,
    );
    out.push(pipelined(url, &parts, n, clients).await?);
    // Every variant stored every append (a driver that dropped some would
    // look fast).
    for tag in ["store", "any", "native", "pipelined"] {
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_id LIKE $1")
                .bind(format!("{tag}-%"))
                .fetch_one(&store.db().pool)
                .await?;
        anyhow::ensure!(stored == n as i64, "{tag}: {stored} of {n} appends stored");
    }
    let busy = MachineCpu::now()?;
    let tps = insert_tps(Pgbench {
        url,
        clients,
        secs: 10,
    })
    .await?;
    let (cpu_us, secs) = busy.since()?;
    out.push(Variant {
        name: "pgbench one-row insert (baseline)".into(),
        per_sec: tps,
        latency_us: None,
        own_cpu_us: None,
        machine_cpu_us: cpu_us / (tps * secs),
    });
    Ok(out)
}

/// One transaction per append through an sqlx `pool` of any database
/// (the `Any` pool and the native one run the very same code).
async fn one_tx_each<DB>(
    name: &str,
    tag: &'static str,
    pool: sqlx::Pool<DB>,
    parts: &AppendParts,
    n: usize,
    clients: usize,
) -> anyhow::Result<Variant>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> (String, i64): sqlx::FromRow<'r, DB::Row>,
{
    let parts = parts.clone();
    timed(name, n, clients, move |i| {
        let (pool, parts) = (pool.clone(), parts.clone());
        async move {
            let mut tx = pool.begin_with(parts.begin).await?;
            let (rows, now) = bound(tag, i)?;
            let _: Vec<(String, i64)> = sqlx::query_as(&parts.insert_events)
                .bind(rows)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await
}

/// tokio-postgres, one connection per task, each append's statements (the
/// BEGIN with the lock, the insert, COMMIT) sent at once: one round trip.
async fn pipelined(
    url: &str,
    parts: &AppendParts,
    n: usize,
    clients: usize,
) -> anyhow::Result<Variant> {
    use tokio_postgres::types::Type;
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("tokio-postgres connect")?;
        tokio::spawn(connection);
        let insert = client
            .prepare_typed(&parts.insert_events, &[Type::TEXT, Type::TEXT])
            .await?;
        let commit = client.prepare("COMMIT").await?;
        conns.push(Arc::new((client, insert, commit)));
    }
    let conns = Arc::new(conns);
    let begin = parts.begin;
    timed(
        "one tx each, tokio-postgres pipelined",
        n,
        clients,
        move |i| {
            let c = conns[i % conns.len()].clone();
            async move {
                let (client, insert, commit) = &*c;
                let (rows, now) = bound("pipelined", i)?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&rows, &now];
                let (_, stored, _) = tokio::try_join!(
                    client.batch_execute(begin),
                    client.query(insert, &params),
                    client.execute(commit, &[]),
                )?;
                anyhow::ensure!(stored.len() == 1, "the pipelined insert stored nothing");
                Ok(())
            }
        },
    )
    .await
}

/// `n` appends by `clients` tasks taking the next index in turn: rate,
/// latency and CPU per append. Task `w` calls `append(w + clients * i)`
/// for each index `i` it takes: unique per append, and `% clients` gives
/// the task's own number (tokio-postgres keeps one connection per task).
async fn timed<F, Fut>(name: &str, n: usize, clients: usize, append: F) -> anyhow::Result<Variant>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let pb = bar(n, name);
    let next = Arc::new(AtomicUsize::new(0));
    let (own, busy) = (OwnCpu::now()?, MachineCpu::now()?);
    let started = Instant::now();
    let workers = (0..clients).map(|w| {
        let (append, next, pb) = (append.clone(), next.clone(), pb.clone());
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(h);
                }
                let t = Instant::now();
                append(w + clients * i).await?;
                h.saturating_record(t.elapsed().as_micros() as u64);
                pb.inc(1);
            }
        })
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in futures::future::join_all(workers).await {
        all.add(w??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let own_us = own.since()?;
    let (machine_us, _) = busy.since()?;
    pb.finish_and_clear();
    Ok(Variant {
        name: name.into(),
        per_sec: n as f64 / secs,
        latency_us: Some((&all).into()),
        own_cpu_us: Some(own_us / n as f64),
        machine_cpu_us: machine_us / n as f64,
    })
}

/// One event of a new aggregate, order-sized, as a create appends it.
fn request(tag: &str, i: usize) -> AppendRequest {
    let id = format!("{tag}-{i}");
    AppendRequest {
        aggregate_type: "order".into(),
        aggregate_id: id.clone(),
        expected_version: 0,
        events: vec![NewEvent {
            event_id: format!("{id}-e1"),
            event_type: "OrderCreated".into(),
            schema_version: 1,
            payload: serde_json::json!({
                "customer_id": "bench-1",
                "items": [{"sku": "sku-1", "quantity": 1, "unit_price_cents": 1999}],
            }),
        }],
        metadata: EventMetadata {
            command_id: format!("{id}-c"),
            occurred_at: chrono::Utc::now(),
            caller: None,
            traceparent: None,
        },
        idempotency: None,
    }
}

/// The insert's two parameters for the append `tag`-`i`.
fn bound(tag: &str, i: usize) -> anyhow::Result<(String, String)> {
    let r = request(tag, i);
    Ok((
        AppendParts::rows(&[&r])?,
        AppendParts::recorded_at(chrono::Utc::now()),
    ))
}

fn table(variants: &[Variant]) -> String {
    let base = variants
        .iter()
        .find(|v| v.latency_us.is_none())
        .map(|v| v.per_sec);
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "append of one event (PostgreSQL)",
        "/s",
        "ratio to pgbench",
        "p50 ms",
        "p99 ms",
        "CPU µs each, this process",
        "CPU µs each, machine",
    ]);
    for v in variants {
        let ms = |f: fn(&Percentiles) -> u64| {
            v.latency_us
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{:.2}", f(p) as f64 / 1000.0))
        };
        table.add_row(vec![
            v.name.clone(),
            format!("{:.0}", v.per_sec),
            base.map_or("-".into(), |b| format!("{:.2}", v.per_sec / b)),
            ms(|p| p.p50),
            ms(|p| p.p99),
            v.own_cpu_us.map_or("-".into(), |c| format!("{c:.0}")),
            format!("{:.0}", v.machine_cpu_us),
        ]);
    }
    table.to_string()
}
