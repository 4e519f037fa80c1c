//! Your own aggregate on the framework: an account whose rules are a pure
//! `decide`/`evolve`, run through `cqrs-sql`'s command handler on an event
//! store (SQLite in a temp dir, or `DATABASE_URL=postgres://...`).
//! Run it: `cargo run -p cqrs-sql --example account`

use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind};
use cqrs_sql::{execute, CommandError, CommandOptions, Db, DbOptions, EventStore, SqlEventStore};

enum Command {
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Event {
    Deposited { cents: i64 },
    Withdrawn { cents: i64 },
}

impl DomainEvent for Event {
    fn event_type(&self) -> &'static str {
        match self {
            Event::Deposited { .. } => "Deposited",
            Event::Withdrawn { .. } => "Withdrawn",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the balance of {balance} cents is short of {wanted}")]
struct Insufficient {
    balance: i64,
    wanted: i64,
}

impl DomainError for Insufficient {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Conflict
    }
    fn code(&self) -> &'static str {
        "insufficient_funds"
    }
}

struct Account;

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type State = i64; // the balance in cents
    type Command = Command;
    type Event = Event;
    type Error = Insufficient;

    fn decide(balance: &i64, command: &Command) -> Result<Vec<Event>, Insufficient> {
        match *command {
            Command::Deposit(cents) => Ok(vec![Event::Deposited { cents }]),
            Command::Withdraw(cents) if cents > *balance => Err(Insufficient {
                balance: *balance,
                wanted: cents,
            }),
            Command::Withdraw(cents) => Ok(vec![Event::Withdrawn { cents }]),
        }
    }

    fn evolve(balance: i64, event: &Event) -> i64 {
        match event {
            Event::Deposited { cents } => balance + cents,
            Event::Withdrawn { cents } => balance - cents,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| cqrs_sql::db::sqlite_url(&dir.path().join("bank.db")));
    let store = SqlEventStore::open(Db::connect(&url, &DbOptions::default()).await?).await?;
    let id = uuid::Uuid::now_v7().to_string();
    for command in [
        Command::Deposit(500),
        Command::Withdraw(200),
        Command::Withdraw(1_000),
    ] {
        match execute::<Account, _>(&store, &id, &command, CommandOptions::new()).await {
            Ok(done) => println!(
                "account {id}: version {}, position {}",
                done.version, done.position
            ),
            Err(CommandError::Domain(refused)) => {
                println!("refused ({}): {refused}", refused.code())
            }
            Err(other) => return Err(other.into()),
        }
    }
    let events: Vec<Event> = store
        .load(&id)
        .await?
        .iter()
        .map(|e| e.decode())
        .collect::<Result<_, _>>()?;
    let balance = Account::fold(&events);
    println!(
        "{} events in the store; their fold: a balance of {balance} cents",
        events.len()
    );
    anyhow::ensure!(balance == 300, "the fold of the log is the balance");
    Ok(())
}
