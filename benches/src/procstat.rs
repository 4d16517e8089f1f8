//! Resident memory and CPU time of a process, from /proc (Linux).

use std::time::Duration;

/// A sample of a process's resources.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Resident set size, bytes.
    pub(crate) rss: u64,
    /// The highest resident set size since the process started (the
    /// kernel's VmHWM), bytes.
    pub(crate) peak_rss: u64,
    /// User + system CPU time.
    pub(crate) cpu: Duration,
}

/// Samples process `pid`; zeros when /proc cannot be read.
pub(crate) fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bytes = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let (rss, peak_rss) = (bytes("VmRSS:"), bytes("VmHWM:"));
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .map_or(Duration::ZERO, |ticks| {
            Duration::from_millis(ticks * 1000 / clock_ticks())
        });
    Sample { rss, peak_rss, cpu }
}

fn clock_ticks() -> u64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf CLK_TCK` would
    // need libc.
    100
}
