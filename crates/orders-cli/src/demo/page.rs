//! The teaching page's scenario (create an order, then query its status),
//! run for real against a served instance and recorded step by step.

use super::tables::{steps_table, tracker_table, Step, TrackerRow, WIDTH};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cqrs_sql::EventStore;
use orders::read_model;
use orders::views::Views;
use orders_service::server::{Running, PROJECTOR};
use serde_json::{json, Value};
use std::fmt;
use std::time::Duration;

/// The state of each store at one moment, as the tracker shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Write DB.
    pub write_db: String,
    /// The log between the sides (Kafka in distributed mode).
    pub event_log: String,
    /// Read DB.
    pub read_db: String,
    /// What the client has seen.
    pub client_output: String,
}

struct Probe<'a> {
    running: &'a Running,
    order_id: Option<String>,
}

impl Probe<'_> {
    async fn snapshot(&self, client_output: &str) -> anyhow::Result<Snapshot> {
        let app = &self.running.app;
        let last = app.store.head_position().await?;
        let checkpoints = cqrs_sql::read::runner::load_checkpoints(&app.read, PROJECTOR).await?;
        let next = checkpoints.get(&cqrs_sql::SourceKey::Log).copied();
        let consumed = next.unwrap_or(1) - 1;
        let (write_db, read_db) = match &self.order_id {
            None => ("Empty".to_owned(), "Empty".to_owned()),
            Some(id) => {
                let events = app.store.load(id).await?;
                let write = match events.last() {
                    None => "Empty".to_owned(),
                    Some(e) => format!(
                        "Order created ({} v{}, position {})",
                        short(id),
                        e.version,
                        e.position
                    ),
                };
                let read = match read_model::get_order(&app.read.pool, id).await? {
                    None => "Empty".to_owned(),
                    Some(o) => {
                        format!("Order data updated ({}, {} cents)", o.status, o.total_cents)
                    }
                };
                (write, read)
            }
        };
        let event_log = if last == 0 {
            "Empty".to_owned()
        } else if consumed < last {
            format!(
                "OrderCreated published (log@{last}), {} pending",
                last - consumed
            )
        } else {
            format!("OrderCreated consumed (checkpoint log@{consumed}); 0 pending")
        };
        Ok(Snapshot {
            write_db,
            event_log,
            read_db,
            client_output: client_output.to_owned(),
        })
    }
}

fn short(id: &str) -> String {
    format!("{}…", &id[..id.len().min(8)])
}

/// What the demo captured.
#[derive(Debug, serde::Serialize)]
pub struct DemoRun {
    /// Start of the run.
    pub started_at: DateTime<Utc>,
    /// The order.
    pub order_id: String,
    /// Step table rows.
    pub steps: Vec<Step>,
    /// Tracker columns: (label, snapshot).
    pub tracker: Vec<(String, Snapshot)>,
}

/// Runs the scenario against `running` served at `base`: the teaching
/// page's steps, each recorded as it happens.
pub async fn scenario(running: &Running, base: &str, stale_read: bool) -> anyhow::Result<DemoRun> {
    let mut s = Scenario {
        base,
        http: reqwest::Client::new(),
        probe: Probe {
            running,
            order_id: None,
        },
        steps: Vec::new(),
        tracker: Vec::new(),
    };
    s.track("Start", "None").await?;
    let started_at = Utc::now();
    let (order_id, token) = s.send_create_order().await?;
    s.command_processed(&order_id, &token).await?;
    if stale_read {
        s.query_too_early(&order_id).await?;
    } else {
        // Watch the projector from inside, so the table shows step 3 before step 4.
        let t: cqrs_core::ConsistencyToken = token.parse()?;
        let progress = &running.app.progress;
        progress.wait_for(&t, Duration::from_secs(10)).await?;
    }
    let answer = s.query_with_token(&order_id, &token).await?;
    s.event_consumed(&order_id).await?;
    s.query_answered(answer, stale_read).await?;
    let consistent = s.end().await?;
    if !consistent {
        bail!("read model differs from the fold of the write side");
    }
    Ok(DemoRun {
        started_at,
        order_id,
        steps: s.steps,
        tracker: s.tracker,
    })
}

/// The scenario as it runs: the steps and tracker columns so far (the
/// instance is the probe's).
struct Scenario<'a> {
    base: &'a str,
    http: reqwest::Client,
    probe: Probe<'a>,
    steps: Vec<Step>,
    tracker: Vec<(String, Snapshot)>,
}

/// The consistent query's answer, with when it was sent and answered.
struct Answer {
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
    order: Value,
}

impl Scenario<'_> {
    /// A tracker column: the state of every part now.
    async fn track(&mut self, label: &str, client_output: &str) -> anyhow::Result<()> {
        let snapshot = self.probe.snapshot(client_output).await?;
        self.tracker.push((label.to_owned(), snapshot));
        Ok(())
    }

    /// Step 1: the client sends CreateOrder; returns its order id and token.
    async fn send_create_order(&mut self) -> anyhow::Result<(String, String)> {
        let body = json!({ "customer_id": "alice", "items": [
            { "sku": "book-cqrs", "quantity": 2, "unit_price_cents": 1500 },
            { "sku": "mug-kafka", "quantity": 1, "unit_price_cents": 800 } ] });
        let sent_at = Utc::now();
        let res = self
            .http
            .post(format!("{}/orders", self.base))
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let answer: Value = res.json().await?;
        if status.as_u16() != 201 {
            bail!("CreateOrder answered {status}: {answer}");
        }
        let order_id = answer["order_id"].as_str().context("order_id")?.to_owned();
        let token = answer["consistency_token"]
            .as_str()
            .context("token")?
            .to_owned();
        self.probe.order_id = Some(order_id.clone());
        self.steps.push(Step {
            step: "1".into(),
            at: sent_at,
            action: "Send CreateOrder command".into(),
            component: "Client".into(),
            data_state: "No new order".into(),
            event: "None".into(),
            output: "Command sent: POST /orders".into(),
        });
        Ok((order_id, token))
    }

    /// Step 2: the command handler decided and committed the event to the
    /// log (the outbox).
    async fn command_processed(&mut self, order_id: &str, token: &str) -> anyhow::Result<()> {
        let events = self.probe.running.app.store.load(order_id).await?;
        let created = events.first().context("the order has no event")?;
        self.steps.push(Step {
            step: "2".into(),
            at: created.recorded_at,
            action: "Process command".into(),
            component: "Command Handler".into(),
            data_state: format!(
                "Order saved in Write DB (v{}, position {})",
                created.version, created.position
            ),
            event: format!(
                "{} published (log@{})",
                created.event_type, created.position
            ),
            output: format!("201 Created, token {token}"),
        });
        self.track("After Step 2", "201 Created (order id, token)")
            .await
    }

    /// Step 2b: too early and without the token, the read model may not
    /// have the order yet.
    async fn query_too_early(&mut self, order_id: &str) -> anyhow::Result<()> {
        let url = format!("{}/orders/{order_id}", self.base);
        let res = self.http.get(&url).send().await?;
        let code = res.status();
        let out: Value = res.json().await?;
        self.steps.push(Step {
            step: "2b".into(),
            at: Utc::now(),
            action: "Query without the token (too early)".into(),
            component: "Query Handler".into(),
            data_state: "Read DB not updated yet".into(),
            event: "OrderCreated not consumed yet".into(),
            output: format!("{code}: {}", out["error"].as_str().unwrap_or("stale read")),
        });
        Ok(())
    }

    /// Steps 4 and 5 over HTTP: the client queries with its token; the
    /// handler waits for the read model.
    async fn query_with_token(&mut self, order_id: &str, token: &str) -> anyhow::Result<Answer> {
        let sent = Utc::now();
        let res = self
            .http
            .get(format!("{}/orders/{order_id}", self.base))
            .header("x-consistency-token", token)
            .send()
            .await?;
        let code = res.status();
        let order: Value = res.json().await?;
        let answered = Utc::now();
        if !code.is_success() {
            bail!("the consistent query answered {code}: {order}");
        }
        Ok(Answer {
            sent,
            answered,
            order,
        })
    }

    /// Step 3, from the read DB's own record of when it consumed and
    /// applied the event.
    async fn event_consumed(&mut self, order_id: &str) -> anyhow::Result<()> {
        let read = &self.probe.running.app.read;
        let applied = cqrs_sql::read::traces::last_applied(read, PROJECTOR, order_id)
            .await?
            .context("the read model answered, but the projector has no record of the order")?;
        let applied_at = cqrs_sql::db::parse_timestamp(&applied.applied_at)?;
        let consumed_at = cqrs_sql::db::parse_timestamp(&applied.consumed_at)?;
        self.steps.push(Step {
            step: "3".into(),
            at: applied_at,
            action: "Consume event".into(),
            component: "Read Model (projector)".into(),
            data_state: "Read DB updated with order".into(),
            event: format!("OrderCreated consumed from {}", applied.published_as),
            output: format!(
                "Read DB updated ({} µs after consume)",
                (applied_at - consumed_at).num_microseconds().unwrap_or(0)
            ),
        });
        self.track("After Step 3", "201 Created (order id, token)")
            .await
    }

    /// Steps 4 and 5 in the table: the query sent and answered.
    async fn query_answered(&mut self, a: Answer, stale_read: bool) -> anyhow::Result<()> {
        self.steps.push(Step {
            step: "4".into(),
            at: a.sent,
            action: "Send Query for order status".into(),
            component: "Client".into(),
            data_state: if stale_read {
                "Read DB not updated yet: the handler waits for the token".into()
            } else {
                "Read DB has order data".into()
            },
            event: "None".into(),
            output: "Query sent: GET /orders/{id} + X-Consistency-Token".into(),
        });
        let status_text = a.order["status"].as_str().unwrap_or("?").to_owned();
        self.steps.push(Step {
            step: "5".into(),
            at: a.answered,
            action: "Process query".into(),
            component: "Query Handler".into(),
            data_state: "Read DB accessed".into(),
            event: "None".into(),
            output: format!(
                "Order status returned: {status_text} ({} cents)",
                a.order["total_cents"]
            ),
        });
        let client_out = format!("Order status response: {status_text}");
        self.track("After Step 5", &client_out).await
    }

    /// Step 6: both sides agree, checked rather than assumed; whether they do.
    async fn end(&mut self) -> anyhow::Result<bool> {
        let app = &self.probe.running.app;
        let folded = Views::fold(&app.store.all_events().await?)?;
        let loaded = read_model::load_views(&app.read.pool).await?;
        let consistent = folded == loaded;
        self.steps.push(Step {
            step: "6".into(),
            at: Utc::now(),
            action: "End".into(),
            component: "System".into(),
            data_state: if consistent {
                "Consistent read and write DBs (verified)".into()
            } else {
                "READ MODEL DIFFERS".into()
            },
            event: "No new events".into(),
            output: "Response sent".into(),
        });
        let client_out = self
            .tracker
            .last()
            .map(|(_, s)| s.client_output.clone())
            .unwrap_or_default();
        self.track("Final", &client_out).await?;
        Ok(consistent)
    }
}

/// `{run}` fits [`WIDTH`] columns; `{run:N}` fits N (0: never wraps).
impl fmt::Display for DemoRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.width().map_or(WIDTH, |w| w as u16);
        let steps = steps_table(self.started_at, &self.steps, width);
        let rows: [TrackerRow<'_, Snapshot>; 4] = [
            ("Write DB (Orders)", |s| s.write_db.clone()),
            ("Event log (Kafka's place)", |s| s.event_log.clone()),
            ("Read DB (Query)", |s| s.read_db.clone()),
            ("Client Output", |s| s.client_output.clone()),
        ];
        let tracker = tracker_table(&self.tracker, &rows, width);
        writeln!(f, "CQRS flow, real run — order {}\n", self.order_id)?;
        writeln!(
            f,
            "Process table (times in ms since the command was sent)\n{steps}\n"
        )?;
        writeln!(f, "State tracker\n{tracker}")
    }
}
