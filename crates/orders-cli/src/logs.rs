//! Where and how the `orders` binary writes its logs.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
    /// Text for people (colours only on a terminal).
    Pretty,
}

/// Installs the log subscriber; returns the format it writes.
pub fn init_logs(filter: Option<&str>, format: Option<LogFormat>, default: &str) -> LogFormat {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_owned());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colours only on a terminal: a log file gets plain text.
        LogFormat::Pretty => builder.with_ansi(terminal).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("logs not set up: {e}");
    }
    format
}

/// `e` and its causes on one line, each said once: a cause whose text its
/// error already quotes (`"schema migrations: {0}"` with the database's
/// error as its source, too) is not repeated.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::cause_chain;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("connection refused")]
        Refused,
    }

    #[derive(Debug, thiserror::Error)]
    enum Quoting {
        #[error("schema migrations: {0}")]
        Db(#[from] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Wrapping(#[source] Quoting);

    #[test]
    fn each_cause_is_said_once() {
        let e = Wrapping(Quoting::Db(Inner::Refused));
        assert_eq!(
            cause_chain(&e),
            "cannot start: schema migrations: connection refused"
        );
        let anyhow = anyhow::Error::new(Quoting::Db(Inner::Refused)).context("migrating");
        assert_eq!(
            cause_chain(anyhow.as_ref()),
            "migrating: schema migrations: connection refused"
        );
    }
}
