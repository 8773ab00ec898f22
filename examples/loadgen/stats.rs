//! Percentiles and the figures every part reports.

use std::time::Duration;

use serde_json::{Value, json};

/// The value at quantile `q` (0..=1) of `samples`, nearest rank; zero for no samples.
pub(crate) fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Rounds to 3 significant decimals for the report.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// `{"p50_ms","p99_ms"}` of the samples.
pub(crate) fn latency(samples: &mut [Duration]) -> Value {
    json!({
        "p50_ms": ms(percentile(samples, 0.50)),
        "p99_ms": ms(percentile(samples, 0.99)),
    })
}

/// Resident memory of a process from `/proc/<pid>/status`, in KiB ("self" for this one).
pub(crate) fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut s, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&mut s, 0.99), Duration::from_millis(99));
    }
}
