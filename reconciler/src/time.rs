//! Time as the reconciler sees it: milliseconds since the Unix epoch,
//! passed in (never read inside pure code), and RFC 3339 rendering.

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time. Only the reconcile loop and the CLI call this.
pub fn now() -> Millis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `2026-11-24T14:51:39Z` (UTC, second precision); times outside
/// jiff's range (years -9999..=9999) are clamped to it.
pub fn rfc3339(ms: Millis) -> String {
    let at = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 { jiff::Timestamp::MIN } else { jiff::Timestamp::MAX });
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The current time as [`rfc3339`] writes it.
pub fn now_rfc3339() -> String {
    rfc3339(now())
}

/// Parses an RFC 3339 timestamp (`2026-11-24T14:51:39Z`, or with an
/// offset or fraction); `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_532_299_000), "2026-11-24T14:58:19Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        for ms in [0, 951_782_400_000, 1_795_532_299_000, 4_102_444_799_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-11-24T15:58:19+01:00"), Some(1_795_532_299_000));
        assert!(rfc3339(i64::MAX).starts_with("9999-12-3"), "clamped to the latest time jiff knows");
    }
}
