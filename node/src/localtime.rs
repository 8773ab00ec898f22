//! Times as the user reads them: in the local time zone, which honours `TZ` (an IANA name such
//! as `Europe/Berlin`, a POSIX rule such as `EST5EDT,M3.2.0,M11.1.0`, or unset: the system's
//! `/etc/localtime`), by way of jiff.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Formats Unix milliseconds in one time zone.
#[derive(Debug, Clone)]
pub struct LocalTime {
    tz: TimeZone,
}

impl LocalTime {
    /// The user's time zone (`TZ`, else the system's; UTC if neither can be read).
    pub fn system() -> Self {
        Self {
            tz: TimeZone::system(),
        }
    }

    pub fn new(tz: TimeZone) -> Self {
        Self { tz }
    }

    fn zoned(&self, ms: u64) -> Option<Zoned> {
        let ms = i64::try_from(ms).ok()?;
        Some(
            Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.tz.clone()),
        )
    }

    /// `HH:MM`; `--:--` for a time that cannot be shown (0, or out of range).
    pub fn clock(&self, ms: u64) -> String {
        match self.zoned(ms).filter(|_| ms > 0) {
            Some(zoned) => zoned.strftime("%H:%M").to_string(),
            None => "--:--".to_owned(),
        }
    }

    /// The local calendar day of `ms` (`None` for a time that cannot be shown).
    pub fn day(&self, ms: u64) -> Option<Date> {
        self.zoned(ms).filter(|_| ms > 0).map(|zoned| zoned.date())
    }

    /// How a day is headed in a conversation, seen at `now_ms`: `Today`, `Yesterday`, or
    /// `Mon 30 Nov 2026`.
    pub fn day_label(&self, day: Date, now_ms: u64) -> String {
        let today = self.day(now_ms);
        if today == Some(day) {
            return "Today".to_owned();
        }
        if today.and_then(|today| today.yesterday().ok()) == Some(day) {
            return "Yesterday".to_owned();
        }
        day.strftime("%a %-d %b %Y").to_string()
    }
}

/// `HH:MM` in local time (honouring `TZ`) of a Unix time in milliseconds.
pub fn clock(ms: u64) -> String {
    LocalTime::system().clock(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T12:00:00Z, a Tuesday.
    const NOON: u64 = 1_796_126_400_000;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn clock_and_day_follow_the_time_zone_rules() {
        let utc = LocalTime::new(TimeZone::UTC);
        assert_eq!(utc.clock(NOON), "12:00");
        // New York in December is five hours behind; in July (daylight saving) four.
        let new_york = LocalTime::new(TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap());
        assert_eq!(new_york.clock(NOON), "07:00");
        assert_eq!(new_york.clock(NOON - 150 * 24 * HOUR), "08:00");
        // 02:00 UTC is still the evening before in New York.
        let early = NOON - 10 * HOUR;
        assert_eq!(utc.day(early), Some(jiff::civil::date(2026, 12, 1)));
        assert_eq!(new_york.day(early), Some(jiff::civil::date(2026, 11, 30)));
        assert_eq!(utc.clock(0), "--:--");
        assert_eq!(utc.day(u64::MAX), None);
    }

    #[test]
    fn days_are_headed_today_yesterday_or_by_date() {
        let utc = LocalTime::new(TimeZone::UTC);
        let day = |ms| utc.day(ms).unwrap();
        assert_eq!(utc.day_label(day(NOON), NOON), "Today");
        assert_eq!(utc.day_label(day(NOON - 24 * HOUR), NOON), "Yesterday");
        assert_eq!(
            utc.day_label(day(NOON - 48 * HOUR), NOON),
            "Sun 29 Nov 2026"
        );
        assert_eq!(utc.day_label(day(NOON), 0), "Tue 1 Dec 2026");
    }
}
