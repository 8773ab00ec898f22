//! The wall clock both binaries hand their machines (which are given the time, never read it).

/// Milliseconds since the Unix epoch (0 before it; saturating far after it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
