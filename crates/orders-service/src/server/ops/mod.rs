//! The operator's console: the processors (every projector and the saga,
//! their groups, members, partitions, checkpoints, lag, state and read-model
//! versions), the dead letters with retry and skip, rebuilds started,
//! watched and cancelled, both services' health, and every action audited
//! (`GET|POST /ops/...`, operator only), and the page at `GET /ops` that
//! shows them over the live page's one event stream.

pub mod actions;
pub mod routes;
pub mod view;

use super::rebuilds::Side;
use cqrs_sql::{Projection, ReadProgress, SqlEventStore};
use std::sync::Arc;
use tokio::sync::watch;

/// A projector or saga of this process's services, as the console shows
/// it and the operator acts on it.
#[derive(Clone)]
pub struct Processor {
    /// Its name, under which checkpoints, versions and dead letters are kept.
    pub name: &'static str,
    /// The service it belongs to: `orders` or `inventory`.
    pub service: &'static str,
    /// `projector` or `saga`.
    pub kind: &'static str,
    /// Its consumer group (`embedded` without Kafka).
    pub group: String,
    /// Its topic (`log`, or `inventory log`, without Kafka).
    pub topic: String,
    /// The event log it reads without Kafka.
    pub log: Option<SqlEventStore>,
    /// What a retried dead letter is applied to.
    pub projections: Vec<Arc<dyn Projection>>,
    /// Its read models and their history, where they can be rebuilt (not
    /// the saga's).
    pub rebuild: Option<Side>,
    /// The progress its consistency waits watch (told of a cutover; none
    /// for the saga).
    pub progress: Option<ReadProgress>,
}

/// What the console's handlers share: the processors, and the latest
/// snapshot the metrics sampler made of them.
pub struct Ops {
    /// Every processor of this process's services.
    pub processors: Vec<Processor>,
    /// The latest snapshot (processors, rebuilds, health).
    pub snapshot: watch::Receiver<Option<Arc<view::Published>>>,
    /// The open dead letters as the stream sends them (JSON), when they
    /// changed.
    pub dead_letters: watch::Receiver<Option<Arc<str>>>,
}

/// The writing ends of the console's feed, for the sampler.
pub struct OpsSources {
    /// Where the sampler publishes snapshots.
    pub snapshot: watch::Sender<Option<Arc<view::Published>>>,
    /// Where it publishes the open dead letters.
    pub dead_letters: watch::Sender<Option<Arc<str>>>,
}

impl Ops {
    /// The console over `processors`, with the ends that feed it.
    pub fn new(processors: Vec<Processor>) -> (Ops, OpsSources) {
        let (snapshot_tx, snapshot) = watch::channel(None);
        let (letters_tx, dead_letters) = watch::channel(None);
        (
            Ops {
                processors,
                snapshot,
                dead_letters,
            },
            OpsSources {
                snapshot: snapshot_tx,
                dead_letters: letters_tx,
            },
        )
    }

    /// The processor called `name`.
    pub fn processor(&self, name: &str) -> Option<&Processor> {
        self.processors.iter().find(|p| p.name == name)
    }
}

/// The page.
pub async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../../assets/ops.html"))
}
