//! Private Apache Kafka brokers for fault tests: one node, or a KRaft cluster
//! of several, each a real `java kafka.Kafka` process the test can kill -9,
//! stop and start again without disturbing the shared test broker.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/services` keeps the Kafka jars.
fn kafka_libs() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_KAFKA_LIBS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache =
        std::env::var("ORDERS_CACHE_DIR").unwrap_or_else(|_| format!("{home}/.cache/orders-cqrs"));
    PathBuf::from(cache).join("kafka-4.1.1/libs")
}

fn log4j_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kafka/log4j2.properties")
}

fn java(dir: &Path, args: &[&str]) -> Command {
    let libs = kafka_libs();
    assert!(
        libs.join(".complete").exists(),
        "the Kafka jars are missing at {}: run `scripts/services start` (scripts/test does)",
        libs.display()
    );
    let mut cmd = Command::new("java");
    cmd.args([
        "-Xms128m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
    ])
    .arg(format!(
        "-Dlog4j2.configurationFile={}",
        log4j_config().display()
    ))
    .arg(format!("-Dkafka.logs.dir={}", dir.join("logs").display()))
    .arg("-cp")
    .arg(format!("{}/*", libs.display()))
    .args(args);
    cmd
}

/// A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.
fn cluster_id() -> String {
    use base64::Engine;
    // As Kafka's own `random-uuid` does: never a leading '-', which the
    // storage tool's argument parser would take for an option (one id in
    // 64 failed to format a node).
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// One combined broker+controller node.
pub struct KafkaNode {
    /// Its node id.
    pub id: u32,
    /// The port clients connect to.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl KafkaNode {
    fn properties(&self, voters: &str, advertised_port: u16, replicas: usize) -> String {
        let rf = replicas.min(3);
        let isr = if rf >= 3 { 2 } else { 1 };
        format!(
            "process.roles=broker,controller\n\
             node.id={id}\n\
             controller.quorum.voters={voters}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{advertised_port}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             inter.broker.listener.name=PLAINTEXT\n\
             log.dirs={dir}/data\n\
             num.partitions=6\n\
             default.replication.factor={rf}\n\
             min.insync.replicas={isr}\n\
             offsets.topic.replication.factor={rf}\n\
             offsets.topic.num.partitions=6\n\
             transaction.state.log.replication.factor={rf}\n\
             transaction.state.log.min.isr={isr}\n\
             share.coordinator.state.topic.replication.factor={rf}\n\
             share.coordinator.state.topic.min.isr={isr}\n\
             group.initial.rebalance.delay.ms=0\n\
             group.consumer.min.session.timeout.ms=1000\n\
             group.min.session.timeout.ms=1000\n\
             unclean.leader.election.enable=false\n",
            id = self.id,
            port = self.port,
            cport = self.port + 1,
            dir = self.dir.display(),
        )
    }

    /// Starts (or starts again) the node's process.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = std::fs::File::create(self.dir.join("logs/stdout.log")).expect("kafka log");
        let props = self.dir.join("server.properties");
        let child = java(&self.dir, &["kafka.Kafka", &props.display().to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Kafka node {}: {e}", self.id));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no goodbye to the cluster.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether its process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs/server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private Kafka cluster of `n` nodes (n = 1 or 3).
pub struct KafkaCluster {
    /// The nodes, by index.
    pub nodes: Vec<KafkaNode>,
    _dir: tempfile::TempDir,
}

impl KafkaCluster {
    /// Formats and starts `n` nodes; waits until every broker serves.
    /// `advertise` maps a node's port to the port clients are told to use
    /// (a proxy in front of it), or `None` for the node's own port.
    pub fn start(n: usize, advertise: impl Fn(u16) -> Option<u16>) -> KafkaCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // Two ports per node (client, controller), each pair free.
        let mut nodes: Vec<KafkaNode> = (1..=n as u32)
            .map(|id| {
                // Client and controller ports; out of the ephemeral range so
                // that they are still free when a killed node restarts.
                let port = crate::stable_port();
                let node_dir = dir.path().join(format!("node-{id}"));
                std::fs::create_dir_all(node_dir.join("logs")).expect("node dir");
                KafkaNode {
                    id,
                    port,
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let voters: Vec<String> = nodes
            .iter()
            .map(|nd| format!("{}@127.0.0.1:{}", nd.id, nd.port + 1))
            .collect();
        let voters = voters.join(",");
        let id = cluster_id();
        for node in &nodes {
            let props = node.dir.join("server.properties");
            let advertised = advertise(node.port).unwrap_or(node.port);
            std::fs::write(&props, node.properties(&voters, advertised, n)).expect("properties");
            let out = java(
                &node.dir,
                &[
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    &id,
                    "-c",
                    &props.display().to_string(),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("kafka storage format");
            assert!(
                out.status.success(),
                "formatting node {} failed: {}{}",
                node.id,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for node in &mut nodes {
            node.start();
        }
        let cluster = KafkaCluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            cluster.wait_serving(node.port, Duration::from_secs(90));
        }
        cluster
    }

    /// Waits until something accepts connections on `port`.
    pub fn wait_serving(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Kafka on port {port} did not come up:\n{}",
                self.nodes
                    .iter()
                    .map(|n| n.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The bootstrap list of every node's own port.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        for _ in 0..10_000 {
            let id = super::cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
