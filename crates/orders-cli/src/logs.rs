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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        // Lines as they always were: no span fields.
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        // Colours only on a terminal: a log file gets plain text.
        LogFormat::Pretty => lines.with_ansi(terminal).boxed(),
    };
    let spans = match crate::telemetry::layer() {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let filter = match spans.is_some() {
        true => format!("{filter},{}", crate::telemetry::SPANS_FILTER),
        false => filter,
    };
    let installed = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(lines)
        .with(spans)
        .try_init();
    if let Err(e) = installed {
        eprintln!("logs not set up: {e}");
    }
    format
}

/// Warnings for the secrets `args` (the command line, program name
/// first) carries as flags, where any user of the machine reads them in
/// `ps`: each names the flag and the safer way, never the value.
pub fn secrets_in_flags(args: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let value = || inline.clone().or_else(|| args.clone().next().cloned());
        let safer = match flag {
            "--jwt-hs256-secret" => "--jwt-hs256-secret-file or ORDERS_JWT_HS256_SECRET",
            "--token" => "--token-file or ORDERS_TOKEN",
            "--database-url" if value().is_some_and(|v| has_password(&v)) => {
                "--database-url-file or DATABASE_URL"
            }
            "--read-database-url" if value().is_some_and(|v| has_password(&v)) => {
                "--read-database-url-file or READ_DATABASE_URL"
            }
            "--inventory-database-url" if value().is_some_and(|v| has_password(&v)) => {
                "--inventory-database-url-file or INVENTORY_DATABASE_URL"
            }
            "--kafka-property"
                if value().is_some_and(|v| {
                    v.split_once('=')
                        .is_some_and(|(k, _)| cqrs_kafka::KafkaProperty::is_secret(k))
                }) =>
            {
                "--kafka-properties-file"
            }
            _ => continue,
        };
        warnings.push(format!(
            "{flag} carries a secret on the command line, where any user of this machine can read it (ps, /proc); use {safer}"
        ));
    }
    warnings
}

/// Whether a URL names a password (`scheme://user:password@host`).
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || rest.contains("password=")
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

#[cfg(test)]
mod secret_flag_tests {
    use super::secrets_in_flags;

    fn warned(line: &str) -> Vec<String> {
        let args: Vec<String> = line.split(' ').map(str::to_owned).collect();
        secrets_in_flags(&args)
    }

    #[test]
    fn a_secret_flag_is_named_with_the_safer_way_and_never_quoted() {
        let w =
            warned("orders serve --jwt-hs256-secret hunter2 --database-url=postgres://u:pw@h/db");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("--jwt-hs256-secret-file") && w[1].contains("--database-url-file"));
        assert!(w
            .iter()
            .all(|w| !w.contains("hunter2") && !w.contains("pw@")));
        let w = warned("orders serve --kafka-property sasl.password=x --kafka-property acks=all");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("--kafka-properties-file"));
    }

    #[test]
    fn flags_without_secrets_are_not_warned_of() {
        assert!(
            warned("orders serve --database-url postgres://u@h/db --jwt-hs256-secret-file /s")
                .is_empty()
        );
        assert!(warned("orders serve --read-database-url=sqlite:///tmp/r.db").is_empty());
    }
}
