//! A private PostgreSQL server for fault tests: its own data directory and
//! port, so a test can stop and start it without disturbing the shared one.
//! Runs as the `postgres` system user (Debian's packages, installed by
//! `scripts/services`); the tests run as root, as CI does.

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL server the test owns.
pub struct PrivatePostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn as_postgres(command: &str) {
    let out = Command::new("su")
        .args(["postgres", "-c", command])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{command}` as postgres: {e}"));
    assert!(
        out.status.success(),
        "`{command}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePostgres {
    /// Creates a cluster in a temporary directory and starts it.
    pub fn start() -> PrivatePostgres {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is required (scripts/services installs it)")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|v| v.parse::<u32>().ok())
            .max()
            .expect("no PostgreSQL version under /usr/lib/postgresql");
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres", &dir.path().display().to_string()])
            .status()
            .expect("chown");
        assert!(
            status.success(),
            "cannot hand {} to postgres",
            dir.path().display()
        );
        let port = crate::stable_port();
        as_postgres(&format!(
            "{}/initdb -D {} -U postgres -A trust --no-sync >/dev/null",
            bin.display(),
            data.display()
        ));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 200\n",
            dir.path().display()
        );
        let mut existing =
            std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).expect("postgresql.conf");
        let pg = PrivatePostgres {
            port,
            bin,
            data,
            _dir: dir,
        };
        pg.up();
        pg
    }

    /// Its URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        as_postgres(&format!(
            "{}/pg_ctl -D {} -l {}/server.log -w start >/dev/null",
            self.bin.display(),
            self.data.display(),
            self.data.display()
        ));
    }

    /// Stops the server at once (`-m fast`: open sessions are cut).
    pub fn down(&self) {
        as_postgres(&format!(
            "{}/pg_ctl -D {} -m fast -w stop >/dev/null",
            self.bin.display(),
            self.data.display()
        ));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!(
                    "{}/pg_ctl -D {} -m immediate stop",
                    self.bin.display(),
                    self.data.display()
                ),
            ])
            .output();
    }
}
