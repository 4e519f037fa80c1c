//! The live page (`GET /`, every asset in the binary) and its Server-Sent
//! Events (`GET /stream`): the read model's orders and stats after each
//! change, and once a second the projection lag and command throughput.

use crate::app::{App, PROJECTOR};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use futures::Stream;
use orders::read_model::{self, OrderFilter};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// The page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

async fn view(app: &App) -> Option<Event> {
    let stats = read_model::stats(&app.read.pool).await.ok()?;
    let filter = OrderFilter {
        limit: 10,
        ..OrderFilter::default()
    };
    let (orders, _) = read_model::list_orders(&app.read.pool, &filter)
        .await
        .ok()?;
    let total: i64 = stats.values().map(|s| s.order_count).sum();
    let data = json!({ "stats": { "by_status": stats, "total_orders": total }, "orders": orders });
    Some(Event::default().event("view").data(data.to_string()))
}

/// (events on the write side, events applied by the projector).
async fn counts(app: &App) -> Option<(i64, i64)> {
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&app.store.db().pool)
        .await
        .ok()?;
    let applied: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM projected_versions WHERE projector = $1",
    )
    .bind(PROJECTOR)
    .fetch_one(&app.read.pool)
    .await
    .ok()?;
    Some((events, applied))
}

struct State {
    app: App,
    changes: tokio::sync::watch::Receiver<u64>,
    tick: tokio::time::Interval,
    last_events: Option<i64>,
    first: bool,
}

/// `GET /stream`: `view` events on read-model changes (at most 5 a second),
/// `progress` events every second ({lag: events not yet applied, rate:
/// events appended per second}).
pub async fn stream(
    axum::extract::State(app): axum::extract::State<App>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        changes: app.progress.changes(),
        app,
        tick,
        last_events: None,
        first: true,
    };
    let events = futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.first {
                s.first = false;
                if let Some(e) = view(&s.app).await {
                    return Some((Ok(e), s));
                }
            }
            tokio::select! {
                changed = s.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    s.changes.borrow_and_update();
                    if let Some(e) = view(&s.app).await {
                        return Some((Ok(e), s));
                    }
                }
                _ = s.tick.tick() => {
                    if let Some((events, applied)) = counts(&s.app).await {
                        // Command throughput: events appended in the last second.
                        let rate = s.last_events.map_or(0, |l| (events - l).max(0));
                        s.last_events = Some(events);
                        let data = json!({ "lag": (events - applied).max(0), "rate": rate as f64 });
                        return Some((Ok(Event::default().event("progress").data(data.to_string())), s));
                    }
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
