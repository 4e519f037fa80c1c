//! CPU time from `/proc`: this process's, and the whole machine's (every
//! process on it: PostgreSQL's backends, the broker, the load's clients),
//! to state what a command or an append costs beside a baseline.

use anyhow::Context;
use std::time::Instant;

/// This process's CPU time (user + system) from `/proc/self/stat`.
pub struct OwnCpu(f64);

impl OwnCpu {
    /// Reads it now.
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the command name, which is in parentheses.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/self/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(f.get(i).context("/proc/self/stat field")?.parse::<f64>()?)
        };
        // utime and stime are fields 14 and 15 (11 and 12 after the name).
        Ok(Self((ticks(11)? + ticks(12)?) * TICK_US))
    }

    /// µs of CPU since `now`.
    pub fn since(&self) -> anyhow::Result<f64> {
        Ok(Self::now()?.0 - self.0)
    }
}

/// The machine's busy CPU time (every state but idle and iowait) from
/// `/proc/stat`, with the wall clock.
pub struct MachineCpu(f64, Instant);

impl MachineCpu {
    /// Reads it now.
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu = stat.lines().next().context("/proc/stat")?;
        let f: Vec<f64> = cpu
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let total: f64 = f.iter().sum();
        let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
        Ok(Self((total - idle) * TICK_US, Instant::now()))
    }

    /// µs of busy CPU since `now`, and the seconds between.
    pub fn since(&self) -> anyhow::Result<(f64, f64)> {
        Ok((Self::now()?.0 - self.0, self.1.elapsed().as_secs_f64()))
    }
}

/// One clock tick of `/proc` in µs (USER_HZ is 100 on Linux).
const TICK_US: f64 = 10_000.0;
