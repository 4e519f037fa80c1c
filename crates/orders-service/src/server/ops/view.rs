//! What the console shows, made once for every viewer by the metrics
//! sampler: each processor with its members, partitions, checkpoints, lag
//! (and the last minute of it), state and read-model versions; both
//! services' health; and the open dead letters with their envelopes.

use super::super::live::RebuildSample;
use super::super::App;
use super::{OpsSources, Processor};
use cqrs_kafka::groups::GroupDescription;
use cqrs_sql::read::dead_letters::{self, DeadLetter};
use rdkafka::consumer::BaseConsumer;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Samples of lag kept per processor (one per sampler tick: a minute).
pub const LAG_HISTORY: usize = 120;

/// Open dead letters the stream carries (the newest).
pub const STREAMED_LETTERS: i64 = 50;

/// One stream of a processor (a partition, or the log) as the sampler
/// measured it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// The partition number (`log` without Kafka).
    pub partition: String,
    /// The next position the processor will read (its checkpoint); null
    /// before it read anything.
    pub checkpoint: Option<i64>,
    /// The end of the stream (the next offset to be written).
    pub end: i64,
    /// Records not yet applied.
    pub lag_records: i64,
    /// Seconds since the checkpoint last moved while records wait (0 when
    /// caught up).
    pub lag_seconds: f64,
    /// The member that holds it (its client id), when the group says.
    pub member: Option<String>,
}

/// A member of a processor's consumer group.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct MemberView {
    /// The id the group coordinator gave (a static member's begins with its
    /// instance id).
    pub member_id: String,
    /// Its client id (`orders-projector-<pid>`).
    pub client_id: String,
    /// The host it connects from.
    pub host: String,
    /// The partitions it holds.
    pub partitions: Vec<i32>,
}

/// A read model of a processor and the version it serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ReadModelVersion {
    /// The projection.
    pub projection: String,
    /// The version its live tables hold.
    pub live_version: i64,
    /// The version this build's code declares.
    pub code_version: i64,
}

/// A processor as the console shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ProcessorView {
    /// Its name (checkpoints, versions and dead letters are kept under it).
    pub name: String,
    /// `orders` or `inventory`.
    pub service: String,
    /// `projector` or `saga`.
    pub kind: String,
    /// Its consumer group (`embedded` without Kafka).
    pub group: String,
    /// Its topic (`log` without Kafka).
    pub topic: String,
    /// `running`, `parked` (open dead letters hold records back),
    /// `rebuilding` (a build of its read models runs), or `stopped` (its
    /// group has no member).
    pub state: String,
    /// The group's state as the broker says (`Stable`, `Empty`, ...;
    /// `embedded` without Kafka).
    pub group_state: String,
    /// The group's members.
    pub members: Vec<MemberView>,
    /// Its partitions (or its log).
    pub partitions: Vec<PartitionView>,
    /// Records not yet applied, all partitions.
    pub lag_records: i64,
    /// The longest a partition's waiting records have waited, in seconds.
    pub lag_seconds: f64,
    /// `lag_records` over the last minute, oldest first (one sample every
    /// half second).
    pub lag_history: Vec<i64>,
    /// Open dead letters (records it gave up on).
    pub dead_letters: i64,
    /// Records parked behind them.
    pub parked: i64,
    /// The read models it serves and their versions (none for the saga).
    pub read_models: Vec<ReadModelVersion>,
    /// Its read models' build, while one runs (any process's).
    pub rebuild: Option<RebuildSample>,
}

/// One service's health.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ServiceHealth {
    /// `orders` or `inventory`.
    pub service: String,
    /// `this process`, the service's URL, or `elsewhere` (not known here).
    pub location: String,
    /// Whether every dependency answers (null: not known here).
    pub ready: Option<bool>,
    /// Each dependency: `ok`, or why not.
    pub checks: BTreeMap<String, String>,
}

/// Everything the console shows but the dead letters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub at: String,
    /// Every processor of this process's services.
    pub processors: Vec<ProcessorView>,
    /// Both services' health.
    pub health: Vec<ServiceHealth>,
    /// The newest operators' actions (at most 8), as `GET /ops/actions`
    /// lists them.
    pub actions: Vec<super::actions::ActionView>,
}

/// Operators' actions the snapshot carries.
const RECENT_ACTIONS: i64 = 8;

/// A snapshot and its JSON, made once for every stream.
pub struct Published {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its JSON.
    pub json: Arc<str>,
}

/// A dead letter with its decoded envelope.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// Id (time-ordered).
    pub id: String,
    /// The processor that gave up on it.
    pub projector: String,
    /// `dead` (it failed), `parked` (held back behind an earlier one of its
    /// aggregate), `retried` or `discarded` (skipped).
    pub status: String,
    /// Its aggregate, when known.
    pub aggregate_id: Option<String>,
    /// Its version, when it decoded.
    pub version: Option<i64>,
    /// Its event type, when it decoded.
    pub event_type: Option<String>,
    /// Where it was read (topic/partition@offset, or the log position).
    pub published_as: String,
    /// Why it was not applied.
    pub reason: String,
    /// When it was recorded.
    pub created_at: String,
    /// The decoded envelope (metadata and payload).
    #[schema(value_type = Option<Object>)]
    pub envelope: Option<serde_json::Value>,
    /// The record as it came, when it did not decode.
    pub raw: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(l: DeadLetter) -> Self {
        let envelope = l
            .envelope
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok());
        DeadLetterView {
            id: l.id,
            projector: l.projector,
            status: l.status,
            aggregate_id: l.aggregate_id,
            version: l.version,
            event_type: l.event_type,
            published_as: l.published_as,
            reason: l.reason,
            created_at: l.created_at,
            envelope,
            raw: l.raw,
        }
    }
}

/// The open dead letters as the stream carries them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct OpenLetters {
    /// Open letters per processor: `dead` and `parked` counts.
    #[schema(value_type = Object)]
    pub counts: BTreeMap<String, BTreeMap<String, i64>>,
    /// The newest open ones (at most 50).
    pub letters: Vec<DeadLetterView>,
}

/// The sampler's memory between ticks: lag histories, and the group
/// descriptions and health, which it asks for less often.
#[derive(Default)]
pub struct Console {
    ticks: u64,
    history: HashMap<&'static str, VecDeque<i64>>,
    groups: HashMap<&'static str, GroupDescription>,
    health: Vec<ServiceHealth>,
}

/// Ticks between two descriptions of the groups (2 s).
const GROUPS_EVERY: u64 = 4;
/// Ticks between two health checks (5 s).
const HEALTH_EVERY: u64 = 10;

/// What the metrics sampler measured this tick, for the console.
pub struct Sampled<'a> {
    /// Every processor's partitions (or log).
    pub streams: &'a HashMap<&'static str, Vec<PartitionView>>,
    /// The builds running (any process's).
    pub rebuilds: &'a [RebuildSample],
    /// The read models' live versions per projector.
    pub versions: &'a super::super::observe::LiveVersions,
}

/// Open letters per processor, then per status (`dead`, `parked`).
type OpenCounts = BTreeMap<String, BTreeMap<String, i64>>;

impl Console {
    /// Takes this tick's snapshot from what the sampler measured, and
    /// publishes it and the open letters.
    pub async fn tick(
        &mut self,
        app: &App,
        client: Option<Arc<BaseConsumer>>,
        seen: Sampled<'_>,
        out: &OpsSources,
    ) {
        let ops = &app.ops;
        if self.ticks.is_multiple_of(GROUPS_EVERY) {
            if let Some(c) = &client {
                self.groups = describe_groups(c.clone(), &ops.processors).await;
            }
        }
        if self.ticks.is_multiple_of(HEALTH_EVERY) {
            self.health = health(app).await;
        }
        self.ticks += 1;
        let counts = open_counts(app).await;
        let mut processors = Vec::new();
        for p in &ops.processors {
            processors.push(self.processor_view(app, p, &seen, &counts));
        }
        let actions = cqrs_sql::read::audit::recent(&app.read, RECENT_ACTIONS)
            .await
            .inspect_err(|e| tracing::debug!(error = %e, "cannot read the operators' actions"))
            .unwrap_or_default();
        let snapshot = Snapshot {
            at: cqrs_sql::db::timestamp(chrono::Utc::now()),
            processors,
            health: self.health.clone(),
            actions: actions.into_iter().map(Into::into).collect(),
        };
        if let Ok(json) = serde_json::to_string(&snapshot) {
            out.snapshot.send_replace(Some(Arc::new(Published {
                snapshot,
                json: json.into(),
            })));
        }
        if let Some(letters) = open_letters(app, &counts).await {
            out.dead_letters.send_if_modified(|old| {
                let changed = old.as_deref() != Some(&*letters);
                if changed {
                    *old = Some(letters.clone());
                }
                changed
            });
        }
    }

    /// One processor as this tick shows it.
    fn processor_view(
        &mut self,
        app: &App,
        p: &Processor,
        seen: &Sampled<'_>,
        counts: &OpenCounts,
    ) -> ProcessorView {
        let (members, group_state) = self.members_of(app, p);
        let mut partitions = seen.streams.get(p.name).cloned().unwrap_or_default();
        for part in &mut partitions {
            part.member = holder(&members, &part.partition);
        }
        let lag_records: i64 = partitions.iter().map(|s| s.lag_records).sum();
        let lag_seconds = partitions.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
        let count = |status: &str| {
            counts
                .get(p.name)
                .and_then(|c| c.get(status))
                .copied()
                .unwrap_or(0)
        };
        let (dead, parked) = (count("dead"), count("parked"));
        let rebuild = seen
            .rebuilds
            .iter()
            .find(|r| r.projector == p.name)
            .cloned();
        let state = match () {
            _ if rebuild.as_ref().is_some_and(|r| r.alive) => "rebuilding",
            _ if dead + parked > 0 => "parked",
            _ if members.is_empty() && group_state != "unknown" => "stopped",
            _ => "running",
        };
        let live = seen.versions.get(p.name).map_or(&[][..], Vec::as_slice);
        ProcessorView {
            name: p.name.to_owned(),
            service: p.service.to_owned(),
            kind: p.kind.to_owned(),
            group: p.group.clone(),
            topic: p.topic.clone(),
            state: state.to_owned(),
            group_state,
            members,
            partitions,
            lag_records,
            lag_seconds,
            lag_history: self.remember_lag(p.name, lag_records),
            dead_letters: dead,
            parked,
            read_models: read_model_versions(p, live),
            rebuild,
        }
    }

    /// The processor's members and its group's state: this process
    /// (embedded), as the broker last described the group, or `unknown`.
    fn members_of(&self, app: &App, p: &Processor) -> (Vec<MemberView>, String) {
        match (&p.log, self.groups.get(p.name)) {
            (Some(_), _) => (embedded_members(app), "embedded".to_owned()),
            (None, Some(g)) => (
                g.members
                    .iter()
                    .map(|m| MemberView {
                        member_id: m.member_id.clone(),
                        client_id: m.client_id.clone(),
                        host: m.host.clone(),
                        partitions: m.partitions.clone(),
                    })
                    .collect(),
                g.state.clone(),
            ),
            (None, None) => (Vec::new(), "unknown".to_owned()),
        }
    }

    /// Adds this tick's lag to the processor's last minute; answers it.
    fn remember_lag(&mut self, name: &'static str, lag: i64) -> Vec<i64> {
        let history = self.history.entry(name).or_default();
        history.push_back(lag);
        while history.len() > LAG_HISTORY {
            history.pop_front();
        }
        history.iter().copied().collect()
    }
}

/// The member (its client id) that holds `partition`.
fn holder(members: &[MemberView], partition: &str) -> Option<String> {
    let n = partition.parse::<i32>().ok()?;
    members
        .iter()
        .find(|m| m.partitions.contains(&n))
        .map(|m| m.client_id.clone())
}

/// `p`'s read models with the versions `live` says they serve (the code's
/// where the read DB has none yet) and the code's.
pub fn read_model_versions(p: &Processor, live: &[(String, i64)]) -> Vec<ReadModelVersion> {
    p.rebuild
        .iter()
        .flat_map(|side| side.projections.iter())
        .map(|proj| ReadModelVersion {
            projection: proj.name().to_owned(),
            live_version: live
                .iter()
                .find(|(n, _)| n == proj.name())
                .map_or(proj.version(), |(_, v)| *v),
            code_version: proj.version(),
        })
        .collect()
}

/// Without Kafka the processors run in this process, or nowhere.
fn embedded_members(app: &App) -> Vec<MemberView> {
    match app.projects_here {
        true => vec![MemberView {
            member_id: "this process".into(),
            client_id: format!("orders-{}", std::process::id()),
            host: cqrs_kafka::membership::host_name(),
            partitions: Vec::new(),
        }],
        false => Vec::new(),
    }
}

/// Each Kafka processor's group, as the broker describes it (a group that
/// cannot be described is left out: `unknown`).
async fn describe_groups(
    client: Arc<BaseConsumer>,
    processors: &[Processor],
) -> HashMap<&'static str, GroupDescription> {
    let asks: Vec<(&'static str, String, String)> = processors
        .iter()
        .filter(|p| p.log.is_none())
        .map(|p| (p.name, p.group.clone(), p.topic.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        asks.into_iter()
            .filter_map(|(name, group, topic)| {
                cqrs_kafka::groups::describe_group(&*client, &group, &topic, Duration::from_secs(2))
                    .inspect_err(
                        |e| tracing::debug!(group, error = %e, "cannot describe the group"),
                    )
                    .ok()
                    .map(|d| (name, d))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Open letters per processor and status.
async fn open_counts(app: &App) -> OpenCounts {
    let mut out = OpenCounts::new();
    match dead_letters::open_counts(&app.read).await {
        Ok(rows) => {
            for (projector, status, n) in rows {
                out.entry(projector).or_default().insert(status, n);
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot count the dead letters"),
    }
    out
}

/// The newest open letters, as the stream sends them.
async fn open_letters(app: &App, counts: &OpenCounts) -> Option<Arc<str>> {
    let letters = dead_letters::list_every(&app.read, false, None, STREAMED_LETTERS)
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "cannot list the dead letters"))
        .ok()?;
    let open = OpenLetters {
        counts: counts.clone(),
        letters: letters.into_iter().map(DeadLetterView::from).collect(),
    };
    serde_json::to_string(&open).ok().map(Into::into)
}

/// Both services' health: the parts of this process's readiness each
/// depends on, or the inventory service's own answer where it runs
/// elsewhere.
pub async fn health(app: &App) -> Vec<ServiceHealth> {
    let checks = super::super::observe::readiness(app).await;
    let pick = |names: &[&str]| -> BTreeMap<String, String> {
        checks
            .iter()
            .filter(|(k, _)| names.contains(k))
            .map(|(k, r)| {
                let v = match r {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e.clone(),
                };
                ((*k).to_owned(), v)
            })
            .collect()
    };
    let here = |service: &str, checks: BTreeMap<String, String>| ServiceHealth {
        service: service.into(),
        location: "this process".into(),
        ready: Some(checks.values().all(|v| v == "ok")),
        checks,
    };
    let mut out = Vec::new();
    match app.orders_here {
        true => out.push(here("orders", pick(&["write_db", "read_db", "kafka"]))),
        false => out.push(ServiceHealth {
            service: "orders".into(),
            location: "elsewhere".into(),
            ready: None,
            checks: BTreeMap::new(),
        }),
    }
    match (app.orders_here, app.inventory.is_some()) {
        (true, true) => out.push(here(
            "inventory",
            pick(&["inventory_db", "read_db", "kafka"]),
        )),
        (false, true) => out.push(here("inventory", pick(&["write_db", "read_db", "kafka"]))),
        (_, false) => {
            let remote = app.inventory_link.remote_readiness().await;
            out.push(match remote {
                Some((url, Ok(r))) => ServiceHealth {
                    service: "inventory".into(),
                    location: url,
                    ready: Some(r.ready),
                    checks: r
                        .checks
                        .into_iter()
                        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                        .collect(),
                },
                Some((url, Err(e))) => ServiceHealth {
                    service: "inventory".into(),
                    location: url,
                    ready: Some(false),
                    checks: BTreeMap::from([("reachable".to_owned(), e.to_string())]),
                },
                None => ServiceHealth {
                    service: "inventory".into(),
                    location: "elsewhere".into(),
                    ready: None,
                    checks: BTreeMap::new(),
                },
            });
        }
    }
    out
}
