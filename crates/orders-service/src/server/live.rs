//! The live page (`GET /`, every asset in the binary) and its Server-Sent
//! Events (`GET /stream`): the server's mode first, the read model's orders
//! and stats after each change, once a second the projection lag and command
//! throughput, and the journey of each command the stream was asked to follow
//! (`?follow=ID`) until it is complete. One connection carries it all, so a
//! page never holds more than one request open.
//!
//! What the page shows is computed once for every viewer: one task renders
//! the view when the read model moves (at most 5 times a second) and the
//! metrics sampler publishes lag and rate; each stream only forwards the
//! latest of both. A thousand open pages cost the database what one does;
//! only a followed journey is read per stream, and only until it completes.

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use cqrs_sql::{Db, ReadProgress};
use futures::Stream;
use orders::read_model::{self, OrderFilter};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Fewest milliseconds between two renders of the view.
const VIEW_EVERY: Duration = Duration::from_millis(200);
/// How often a stream sends progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often a followed journey is read again while it is incomplete.
const JOURNEY_EVERY: Duration = Duration::from_millis(150);
/// How long a journey is followed at most.
const FOLLOW_FOR: Duration = Duration::from_secs(60);
/// Most commands one stream follows.
pub const MAX_FOLLOWED: usize = 8;

/// The page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/index.html"))
}

/// Lag and throughput, as the metrics sampler last measured them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProgressSample {
    /// Events not yet applied to the read model (all partitions).
    pub lag: i64,
    /// Events appended to the write side per second.
    pub rate: f64,
    /// Read models being built beside the live ones, whichever process builds.
    pub rebuilds: Vec<RebuildSample>,
}

/// A build of new read-model versions, as its row in the read DB says.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RebuildSample {
    /// The projector whose read models it builds.
    pub projector: String,
    /// The versions it builds (JSON: projection -> version).
    #[schema(value_type = Object)]
    pub versions: serde_json::Value,
    /// starting, folding, writing, indexing, catching up, cutting over.
    pub phase: String,
    /// Events read so far.
    pub done: i64,
    /// Events to read before the catch-up.
    pub total: i64,
    /// Seconds it has run.
    pub secs: f64,
    /// Seconds left at the rate so far (null before it has read anything).
    pub eta_secs: Option<f64>,
    /// Which process builds it (`host:pid:...`).
    pub owner: String,
    /// Whether its owner is alive (a dead one is taken over and restarted).
    pub alive: bool,
}

impl RebuildSample {
    /// `projector`'s build as its row `b` says at `now_ms`.
    pub fn of(projector: &str, b: &cqrs_sql::read::versions::BuildRow, now_ms: i64) -> Self {
        let secs = (now_ms - b.started_ms).max(0) as f64 / 1e3;
        let rate = if secs > 0.0 {
            b.done as f64 / secs
        } else {
            0.0
        };
        RebuildSample {
            projector: projector.to_owned(),
            versions: serde_json::from_str(&b.versions).unwrap_or_default(),
            phase: b.phase.clone(),
            done: b.done,
            total: b.total,
            secs,
            eta_secs: (rate > 0.0).then(|| (b.total - b.done).max(0) as f64 / rate),
            owner: b.owner.clone(),
            alive: b.is_alive(now_ms),
        }
    }
}

/// What every stream forwards: the latest rendered view and progress.
#[derive(Clone)]
pub struct LiveFeed {
    view: watch::Receiver<Option<Arc<str>>>,
    progress: watch::Receiver<Option<ProgressSample>>,
}

/// The writing ends of the feed, for the tasks that fill it.
pub struct LiveSources {
    /// Where the sampler publishes progress.
    pub progress: watch::Sender<Option<ProgressSample>>,
}

impl LiveFeed {
    /// A feed rendering views from `read`, woken by `changes`; stops when
    /// `closing` turns true.
    pub fn start(
        read: Db,
        changes: &ReadProgress,
        closing: watch::Receiver<bool>,
    ) -> (LiveFeed, LiveSources) {
        let (view_tx, view) = watch::channel(None);
        let (progress_tx, progress) = watch::channel(None);
        tokio::spawn(render_views(read, changes.changes(), view_tx, closing));
        (
            LiveFeed { view, progress },
            LiveSources {
                progress: progress_tx,
            },
        )
    }
}

async fn render(read: &Db) -> Option<Arc<str>> {
    // Counted, so that it shows that open pages do not multiply the
    // database's work.
    metrics::counter!("orders_live_view_renders_total").increment(1);
    let stats = read_model::stats(&read.pool)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "live view: stats unavailable"))
        .ok()?;
    let filter = OrderFilter {
        limit: 10,
        ..OrderFilter::default()
    };
    let (orders, _) = read_model::list_orders(&read.pool, &filter)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "live view: orders unavailable"))
        .ok()?;
    let total: i64 = stats.values().map(|s| s.order_count).sum();
    let data = json!({ "stats": { "by_status": stats, "total_orders": total }, "orders": orders });
    Some(data.to_string().into())
}

/// Renders the view whenever the read model moves (a render that fails is
/// retried each second).
async fn render_views(
    read: Db,
    mut changes: watch::Receiver<u64>,
    view: watch::Sender<Option<Arc<str>>>,
    mut closing: watch::Receiver<bool>,
) {
    let mut stale = true;
    loop {
        // Closing first: the pools close right after, and a render then
        // would only log that they are closed.
        if *closing.borrow() {
            return;
        }
        if stale {
            if let Some(v) = render(&read).await {
                view.send_replace(Some(v));
                stale = false;
            }
        }
        tokio::select! {
            biased;
            _ = closing.wait_for(|c| *c) => return,
            changed = changes.changed() => {
                if changed.is_err() { return; }
                stale = true;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if stale => {}
        }
        tokio::time::sleep(VIEW_EVERY).await;
    }
}

/// Commands a stream follows, and what it last sent of each.
struct Followed {
    app: super::App,
    ids: Vec<String>,
    sent: std::collections::HashMap<String, String>,
    until: tokio::time::Instant,
}

impl Followed {
    /// The next journey that changed since it was last sent; drops the
    /// commands whose journey is complete once it went out.
    async fn next_change(&mut self) -> Option<String> {
        for id in self.ids.clone() {
            let trace = match super::trace::load(&self.app, &id).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, command_id = %id, "live journey unavailable");
                    continue;
                }
            };
            let complete = journey_complete(&trace);
            let Ok(json) = serde_json::to_string(&trace) else {
                continue;
            };
            if complete {
                self.ids.retain(|i| *i != id);
            }
            if self.sent.get(&id) != Some(&json) {
                self.sent.insert(id, json.clone());
                return Some(json);
            }
        }
        None
    }

    fn active(&self) -> bool {
        !self.ids.is_empty() && tokio::time::Instant::now() < self.until
    }
}

/// Whether a journey has nothing more to come: every stage happened, and a
/// creation that asked for stock has the saga's last word (its command on
/// the order: the confirmation or the cancel).
fn journey_complete(t: &super::trace::CommandTrace) -> bool {
    let stages = t.stages.iter().all(|s| s.at.is_some());
    let asked = t
        .event_types
        .iter()
        .any(|e| e == "StockReservationRequested");
    let answered = t
        .reactions
        .last()
        .is_some_and(|r| r.aggregate_id == t.aggregate_id);
    stages && (!asked || answered)
}

/// The server's mode, the first event of every stream, with when the
/// stream will end for its token (`ends_at`, seconds since 1970; null when
/// nobody is checked).
fn mode_event(app: &super::App, ends_at: Option<u64>) -> Event {
    let kafka = app
        .kafka
        .as_ref()
        .map(|k| json!({ "topic": k.topic, "partitions": k.partitions }));
    let data = json!({ "kafka": kafka, "projects_here": app.projects_here, "ends_at": ends_at });
    Event::default().event("mode").data(data.to_string())
}

/// When, on tokio's clock, a stream that must end at `ends_at` (seconds
/// since 1970) ends.
fn deadline(ends_at: Option<u64>) -> Option<tokio::time::Instant> {
    Some(tokio::time::Instant::now() + super::access::left_until(ends_at?))
}

/// The last event of a stream whose token expired.
fn end_event(ends_at: Option<u64>) -> Event {
    let data = json!({ "reason": "token_expired", "at": ends_at });
    Event::default().event("end").data(data.to_string())
}

/// `GET /stream`: `mode` first ({kafka: {topic, partitions} or null,
/// projects_here}), `view` events on read-model changes (at most 5 a
/// second), `progress` events every second ({lag: events not yet applied,
/// rate: events appended per second}), and `journey` events (a command's
/// trace, as `GET /commands/{id}/trace` answers it) for each command in
/// `follow` whenever it changes, until it is complete (or a minute passed).
/// With `console`, the operator's console too: `ops` every second (the
/// sampler's latest snapshot) and `dead_letters` when the open ones change.
/// When `ends_at` (the caller's token expiry plus the leeway) passes, an
/// `end` event ({reason: "token_expired", at}) goes out and the stream
/// closes; it also ends when the server shuts down.
pub fn stream(
    app: super::App,
    follow: Vec<String>,
    ends_at: Option<u64>,
    console: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut feed = app.live.clone();
    // The current view goes out first.
    feed.view.mark_changed();
    let closing = app.closing.clone();
    let first = mode_event(&app, ends_at);
    let ops = console.then(|| {
        let mut letters = app.ops.dead_letters.clone();
        letters.mark_changed();
        (app.ops.snapshot.clone(), letters)
    });
    let followed = Followed {
        app,
        ids: follow,
        sent: Default::default(),
        until: tokio::time::Instant::now() + FOLLOW_FOR,
    };
    let ends = Ends {
        at: deadline(ends_at),
        event: Some(end_event(ends_at)),
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut journeys = tokio::time::interval(JOURNEY_EVERY);
    journeys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Streaming {
        pending: std::collections::VecDeque::from([first]),
        feed,
        ops,
        followed,
        closing,
        tick,
        journeys,
        ends,
    };
    Sse::new(futures::stream::unfold(state, |mut s| async move {
        let e = s.next().await?;
        Some((Ok(e), s))
    }))
    .keep_alive(KeepAlive::default())
}

/// When a stream ends for its token, and the last event it then sends.
struct Ends {
    at: Option<tokio::time::Instant>,
    event: Option<Event>,
}

impl Ends {
    /// Resolves when the deadline passes (never without one).
    async fn passed(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// The console's snapshot and its open dead letters, as a stream follows them.
type ConsoleFeed = (
    watch::Receiver<Option<Arc<super::ops::view::Published>>>,
    watch::Receiver<Option<Arc<str>>>,
);

/// One stream: what it waits on and what it has yet to send.
struct Streaming {
    pending: std::collections::VecDeque<Event>,
    feed: LiveFeed,
    /// The console's snapshot and open letters, when asked for.
    ops: Option<ConsoleFeed>,
    followed: Followed,
    closing: watch::Receiver<bool>,
    tick: tokio::time::Interval,
    journeys: tokio::time::Interval,
    ends: Ends,
}

impl Streaming {
    /// The next event; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            // The end event went out: nothing follows it.
            self.ends.event.as_ref()?;
            let (mut journey_due, mut expired) = (false, false);
            let console = self.ops.is_some();
            let letters = async {
                match &mut self.ops {
                    Some((_, l)) => l.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.feed.view.changed() => {
                    changed.ok()?;
                    let view = self.feed.view.borrow_and_update().clone();
                    if let Some(v) = view {
                        self.pending.push_back(Event::default().event("view").data(&*v));
                    }
                }
                _ = self.tick.tick() => {
                    let sample = self.feed.progress.borrow().clone();
                    if let Some(p) = sample {
                        let data = json!({ "lag": p.lag, "rate": p.rate, "rebuilds": p.rebuilds }).to_string();
                        self.pending.push_back(Event::default().event("progress").data(data));
                    }
                    if let Some((snapshot, _)) = &self.ops {
                        let latest = snapshot.borrow().clone();
                        if let Some(s) = latest {
                            self.pending.push_back(Event::default().event("ops").data(&*s.json));
                        }
                    }
                }
                changed = letters, if console => {
                    changed.ok()?;
                    let latest = self.ops.as_mut().and_then(|(_, l)| l.borrow_and_update().clone());
                    if let Some(l) = latest {
                        self.pending.push_back(Event::default().event("dead_letters").data(&*l));
                    }
                }
                _ = self.journeys.tick(), if self.followed.active() => journey_due = true,
                _ = self.closing.wait_for(|c| *c) => return None,
                // The token expired: its last word, then nothing.
                _ = self.ends.passed() => expired = true,
            }
            if expired {
                return self.ends.event.take();
            }
            // Read outside the select: its other futures borrow the watch
            // channels, which must not be held across a query.
            if journey_due {
                if let Some(j) = self.followed.next_change().await {
                    self.pending
                        .push_back(Event::default().event("journey").data(j));
                }
            }
        }
    }
}
