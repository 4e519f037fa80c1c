//! `orders demo --saga`: the two-service flow, run for real on a fresh
//! embedded instance: stock comes in, an order that fits is reserved by the
//! saga, one that does not is cancelled `out_of_stock`. Printed as the step
//! table (times from the traces: when each command and reaction committed)
//! and the state tracker of both write DBs, the read DB and the client.

use super::tables::{steps_table, tracker_table, Step, TrackerRow, WIDTH};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cqrs_sql::EventStore;
use orders_service::server::trace::{CommandTrace, Reaction};
use orders_service::server::Running;
use serde_json::{json, Value};
use std::fmt;
use std::time::{Duration, Instant};

/// Both services' state at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SagaSnapshot {
    /// The orders' write DB.
    pub orders_db: String,
    /// The inventory's write DB.
    pub inventory_db: String,
    /// The read DB.
    pub read_db: String,
    /// What the client has seen.
    pub client_output: String,
}

/// What `orders demo --saga` captured.
#[derive(Debug, serde::Serialize)]
pub struct SagaRun {
    /// When the first command was sent.
    pub started_at: DateTime<Utc>,
    /// Step table rows.
    pub steps: Vec<Step>,
    /// Tracker columns.
    pub tracker: Vec<(String, SagaSnapshot)>,
}

const SKU: &str = "book";

struct Scenario<'a> {
    running: &'a Running,
    base: &'a str,
    http: reqwest::Client,
    orders: Vec<String>,
    run: SagaRun,
}

impl Scenario<'_> {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    /// The order once the saga is through with it (10 s at most).
    async fn settled(&self, id: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o: Value = self
                .http
                .get(format!("{}/orders/{id}", self.base))
                .send()
                .await?
                .json()
                .await?;
            if o["stock"] == "reserved" || o["status"] == "cancelled" {
                return Ok(o);
            }
            if Instant::now() > deadline {
                bail!("the saga did not settle order {id}: {o}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn trace(&self, command_id: &str) -> anyhow::Result<CommandTrace> {
        let url = format!("{}/commands/{command_id}/trace", self.base);
        Ok(self.http.get(url).send().await?.json().await?)
    }

    async fn snapshot(&mut self, label: &str, client_output: String) -> anyhow::Result<()> {
        let app = &self.running.app;
        let mut orders_db = Vec::new();
        let mut read_db = Vec::new();
        for id in &self.orders {
            let types: Vec<String> = app
                .store
                .load(id)
                .await?
                .into_iter()
                .map(|e| e.event_type)
                .collect();
            orders_db.push(format!("{}: {}", short(id), types.join(" → ")));
            if let Some(o) = orders::read_model::get_order(&app.read.pool, id).await? {
                let stock = o.stock.map(|s| s.as_str()).unwrap_or("untracked");
                read_db.push(format!("{}: {}, stock {stock}", short(id), o.status));
            }
        }
        let inventory = app
            .inventory
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the demo runs the inventory in its process"))?;
        let stock = inventory.store().load(&inventory::Stock::id(SKU)).await?;
        let events: Vec<inventory::StockEvent> =
            stock.iter().map(|e| e.decode()).collect::<Result<_, _>>()?;
        let state = <inventory::Stock as cqrs_core::Aggregate>::fold(&events);
        let inventory_db = match stock.last() {
            None => "Empty".to_owned(),
            Some(e) => format!(
                "{SKU}: on hand {}, reserved {}, available {} (last {})",
                state.on_hand,
                state.reserved(),
                state.available(),
                e.event_type
            ),
        };
        let or_empty = |v: Vec<String>| {
            if v.is_empty() {
                "Empty".to_owned()
            } else {
                v.join("; ")
            }
        };
        self.run.tracker.push((
            label.to_owned(),
            SagaSnapshot {
                orders_db: or_empty(orders_db),
                inventory_db,
                read_db: or_empty(read_db),
                client_output,
            },
        ));
        Ok(())
    }

    fn step(
        &mut self,
        at: DateTime<Utc>,
        action: &str,
        component: &str,
        data: String,
        event: String,
        output: String,
    ) {
        let step = (self.run.steps.len() + 1).to_string();
        self.run.steps.push(Step {
            step,
            at,
            action: action.to_owned(),
            component: component.to_owned(),
            data_state: data,
            event,
            output,
        });
    }

    /// One order of `quantity` books: sent, reacted to, queried.
    async fn order(&mut self, quantity: i64) -> anyhow::Result<()> {
        let body = json!({ "customer_id": "alice", "items": [{ "sku": SKU, "quantity": quantity, "unit_price_cents": 1500 }] });
        let a = self.post("/orders", body).await?;
        let id = a["order_id"].as_str().context("order id")?.to_owned();
        let command = a["command_id"].as_str().context("command id")?.to_owned();
        self.orders.push(id.clone());
        let view = self.settled(&id).await?;
        let trace = self.trace(&command).await?;
        let committed = trace
            .stages
            .get(1)
            .and_then(|s| s.at)
            .unwrap_or_else(Utc::now);
        self.step(
            committed,
            &format!("Send CreateOrder ({quantity} × {SKU})"),
            "Command Handler (Orders)",
            format!("order {} stock pending", short(&id)),
            trace.event_types.join(", "),
            format!("201 order_id={}", short(&id)),
        );
        for r in &trace.reactions {
            self.reaction(r);
        }
        let stock = view["stock"].as_str().unwrap_or("untracked").to_owned();
        let output = format!(
            "status={} stock={stock}{}",
            view["status"].as_str().unwrap_or(""),
            view["cancel_reason"]
                .as_str()
                .map(|r| format!(" reason={r}"))
                .unwrap_or_default()
        );
        self.step(
            Utc::now(),
            "Query the order",
            "Query Handler (read DB)",
            "read DB: order row".into(),
            "—".into(),
            output.clone(),
        );
        self.snapshot(&format!("After order {}", self.orders.len()), output)
            .await
    }

    fn reaction(&mut self, r: &Reaction) {
        let component = if r.aggregate_id.starts_with("stock:") {
            format!("Inventory ({})", r.aggregate_id)
        } else {
            format!("Order ({})", short(&r.aggregate_id))
        };
        self.step(
            r.committed_at,
            &format!("Saga reacts to {}", r.trigger),
            &component,
            format!("{} committed", r.event_types.join(", ")),
            r.event_types.join(", "),
            format!("+{:.2} ms after the order's commit", r.since_command_ms),
        );
    }
}

/// The tail of an id: UUIDv7s made a moment apart share their head.
fn short(id: &str) -> String {
    format!("…{}", &id[id.len().saturating_sub(6)..])
}

/// Runs the two-service scenario against `running` served at `base`.
pub async fn scenario(running: &Running, base: &str) -> anyhow::Result<SagaRun> {
    let mut s = Scenario {
        running,
        base,
        http: reqwest::Client::new(),
        orders: Vec::new(),
        run: SagaRun {
            started_at: Utc::now(),
            steps: Vec::new(),
            tracker: Vec::new(),
        },
    };
    s.snapshot("Start", "—".into()).await?;
    let added = s
        .post(&format!("/inventory/{SKU}/stock"), json!({ "quantity": 2 }))
        .await?;
    s.step(
        Utc::now(),
        "Add stock (2)",
        "Inventory API",
        format!("{SKU} on hand 2"),
        "StockAdded".into(),
        format!("200 version={}", added["version"]),
    );
    s.snapshot("After stock", "200".into()).await?;
    s.order(2).await?;
    s.order(1).await?;
    Ok(s.run)
}

/// `{run}` fits [`WIDTH`] columns; `{run:N}` fits N (0: never wraps).
impl fmt::Display for SagaRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.width().map_or(WIDTH, |w| w as u16);
        let steps = steps_table(self.started_at, &self.steps, width);
        let rows: [TrackerRow<'_, SagaSnapshot>; 4] = [
            ("Write DB (Orders)", |s| s.orders_db.clone()),
            ("Write DB (Inventory)", |s| s.inventory_db.clone()),
            ("Read DB (Query)", |s| s.read_db.clone()),
            ("Client Output", |s| s.client_output.clone()),
        ];
        let tracker = tracker_table(&self.tracker, &rows, width);
        writeln!(
            f,
            "Two services and a saga, real run: stock of 2, an order of 2 (reserved),"
        )?;
        writeln!(f, "an order of 1 (out of stock)\n")?;
        writeln!(
            f,
            "Process table (times in ms since the first command)\n{steps}\n"
        )?;
        writeln!(f, "State tracker\n{tracker}")
    }
}
