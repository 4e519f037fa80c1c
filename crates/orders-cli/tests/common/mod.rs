//! Shared helpers of the binary's tests: real `orders` processes on free
//! ports, a cluster of them on one database and topic, and (from the
//! service's tests) an instance in the test's own process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#![allow(dead_code)]

#[path = "../../../orders-service/tests/common/mod.rs"]
mod in_process;

#[allow(unused_imports)] // not every test starts an instance in process
pub use in_process::*;

/// A real `orders` process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Starts `orders serve` with `args`, logging to `dir/name.log`.
    pub fn serve(
        name: &str,
        dir: &std::path::Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Proc {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orders"));
        cmd.arg("serve").args(args);
        Proc::spawn(name, dir, cmd, env)
    }

    /// Starts `orders serve` with `args` under a file-descriptor limit.
    pub fn serve_with_fd_limit(
        name: &str,
        dir: &std::path::Path,
        fds: u32,
        args: &[String],
    ) -> Proc {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" serve \"$@\""))
            .arg(env!("CARGO_BIN_EXE_orders"))
            .args(args);
        Proc::spawn(name, dir, cmd, &[])
    }

    fn spawn(
        name: &str,
        dir: &std::path::Path,
        mut cmd: std::process::Command,
        env: &[(&str, String)],
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn")
            .env_remove("DATABASE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn orders");
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Sends SIGHUP (reload keys and certificates).
    pub fn signal_hup(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: no cleanup, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if std::time::Instant::now() > deadline {
                self.kill9();
                panic!(
                    "{} did not stop after SIGTERM; log: {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `GET /healthz` to answer 200.
pub async fn wait_healthy(base: &str, proc: &mut Proc) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(proc.alive(), "{} died:\n{}", proc.name, proc.log_text());
        assert!(
            std::time::Instant::now() < deadline,
            "{} never became healthy:\n{}",
            proc.name,
            proc.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The settings shared by the processes of one distributed test.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub topic: String,
    pub brokers: String,
}

impl Cluster {
    pub async fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            database_url: test_support::fresh_postgres_url().await,
            topic: test_support::unique_topic(),
            brokers: test_support::kafka_brokers(),
        }
    }

    /// Another deployment on the same topic: a write DB of its own.
    pub async fn beside(&self) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            database_url: test_support::fresh_postgres_url().await,
            topic: self.topic.clone(),
            brokers: self.brokers.clone(),
        }
    }

    /// The write store's id (what its relay stamps on its records).
    pub async fn store_id(&self) -> String {
        sqlx::query_scalar("SELECT store_id FROM store_identity")
            .fetch_one(&self.db().await.pool)
            .await
            .unwrap()
    }

    /// Starts one role, listening on `port` when given (the API, or health
    /// and metrics alone for a relay or projector).
    pub fn start(
        &self,
        name: &str,
        roles: &str,
        port: Option<u16>,
        extra_env: &[(&str, String)],
    ) -> Proc {
        self.start_with_session(name, roles, port, extra_env, 3000)
    }

    /// The same with the consumers' session timeout in ms (3,000 above).
    pub fn start_with_session(
        &self,
        name: &str,
        roles: &str,
        port: Option<u16>,
        extra_env: &[(&str, String)],
        session_timeout_ms: u32,
    ) -> Proc {
        let mut args = vec![
            "--database-url".into(),
            self.database_url.clone(),
            "--kafka-brokers".into(),
            self.brokers.clone(),
            "--kafka-topic".into(),
            self.topic.clone(),
            "--kafka-group".into(),
            format!("g-{}", self.topic),
            "--kafka-session-timeout-ms".into(),
            session_timeout_ms.to_string(),
            "--role".into(),
            roles.into(),
            "--data-dir".into(),
            self.dir.path().join(name).display().to_string(),
        ];
        if let Some(p) = port {
            args.push("--listen".into());
            args.push(format!("127.0.0.1:{p}"));
        }
        Proc::serve(name, self.dir.path(), &args, extra_env)
    }

    /// The write and read database (one PostgreSQL database here).
    pub async fn db(&self) -> cqrs_sql::Db {
        cqrs_sql::Db::connect(&self.database_url, &cqrs_sql::DbOptions::default())
            .await
            .unwrap()
    }

    /// Waits until the read models equal the fold of the write side and the
    /// outbox is drained; panics with the differences after `secs`.
    pub async fn wait_converged(&self, secs: u64, procs: &mut [&mut Proc]) {
        let store = cqrs_sql::SqlEventStore::open(self.db().await)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let events = store.all_events().await.unwrap();
            let folded = orders::views::Views::fold(&events).unwrap();
            let loaded = orders::read_model::load_views(&store.db().pool)
                .await
                .unwrap();
            let pending = cqrs_sql::EventStore::outbox_pending(&store).await.unwrap();
            if folded == loaded && pending == 0 {
                return;
            }
            if std::time::Instant::now() > deadline {
                let logs: Vec<String> = procs
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name, p.log_text()))
                    .collect();
                panic!(
                    "no convergence after {secs}s: {} orders folded, {} in the read model, {pending} events not yet published\n{}",
                    folded.orders.len(),
                    loaded.orders.len(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The logs of `procs`, one after the other, for failure messages.
pub fn logs_of(procs: &[&mut Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {}\n{}", p.name, p.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `count()` has grown by `more` (a load makes progress);
/// panics with `what` and the processes' logs after `secs`.
pub async fn grows_by(
    count: impl Fn() -> usize,
    more: usize,
    secs: u64,
    what: &str,
    procs: &mut [&mut Proc],
) {
    let target = count() + more;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while count() < target {
        if std::time::Instant::now() > deadline {
            panic!("the load stalled below {target} {what}\n{}", logs_of(procs));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
