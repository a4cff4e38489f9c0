//! Time of week: hour-of-week buckets (Monday 00:00 local is hour 0) and practice hours.

use crate::config::{values::Span, UtcOffset};

/// Seconds east of UTC for `unix` under `offset` (`auto`: the host's zone at that time).
pub fn offset_secs(offset: UtcOffset, unix: f64) -> i64 {
    match offset {
        UtcOffset::Minutes(m) => m as i64 * 60,
        UtcOffset::Auto => {
            let t = unix as libc::time_t;
            // SAFETY: localtime_r writes into our zeroed tm.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
                0
            } else {
                tm.tm_gmtoff
            }
        }
    }
}

/// Local (day of week with Monday 0, minute of day).
pub fn local_day_minute(unix: f64, offset_secs: i64) -> (u32, u32) {
    // Casts saturate; recorded times can be anything.
    let local = (unix.floor() as i64).saturating_add(offset_secs);
    let days = local.div_euclid(86_400);
    let minute = (local.rem_euclid(86_400) / 60) as u32;
    // 1970-01-01 was a Thursday (3 with Monday 0).
    ((days + 3).rem_euclid(7) as u32, minute)
}

/// Hour of week, 0..168.
pub fn hour_of_week(unix: f64, offset_secs: i64) -> u16 {
    let (day, minute) = local_day_minute(unix, offset_secs);
    (day * 24 + minute / 60) as u16
}

/// Practice hours: inside any of the spans.
#[derive(Debug, Clone)]
pub struct PracticeHours {
    spans: Vec<Span>,
    offset: UtcOffset,
}

impl PracticeHours {
    /// Spans are checked by config validation; one that does not parse is skipped.
    pub fn new(spans: &[String], offset: UtcOffset) -> Self {
        Self {
            spans: spans.iter().filter_map(|s| Span::parse(s).ok()).collect(),
            offset,
        }
    }

    pub fn offset_secs(&self, unix: f64) -> i64 {
        offset_secs(self.offset, unix)
    }

    pub fn contains(&self, unix: f64) -> bool {
        let (day, minute) = local_day_minute(unix, self.offset_secs(unix));
        self.spans.iter().any(|s| s.contains(day, minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_of_week_starts_monday() {
        // 2026-11-30 is a Monday.
        let monday = 1_795_996_800.0;
        assert_eq!(local_day_minute(monday, 0), (0, 0));
        assert_eq!(hour_of_week(monday + 3600.0 * 30.0, 0), 30);
        assert_eq!(hour_of_week(monday - 1.0, 0), 167);
        assert_eq!(hour_of_week(monday, 3600), 1);
        // Absurd recorded times do not overflow.
        let _ = hour_of_week(1e300, 3600);
        let _ = hour_of_week(-1e300, -3600);
    }

    #[test]
    fn spans_parse_and_contain() {
        let s = Span::parse("mon-fri 07:00-20:00").unwrap();
        assert!(s.contains(0, 7 * 60));
        assert!(!s.contains(0, 20 * 60));
        assert!(!s.contains(5, 9 * 60));
        let w = Span::parse("fri-mon 22:00-24:00").unwrap();
        assert!(w.contains(6, 23 * 60) && w.contains(0, 23 * 60) && !w.contains(2, 23 * 60));
        assert!(Span::parse("mon-fri 9-5").is_err());
        assert!(Span::parse("funday 09:00-10:00").is_err());
        assert!(Span::parse("mon 10:00-09:00").is_err());
        let p = PracticeHours::new(&["daily 08:00-18:00".into()], UtcOffset::Minutes(60));
        let monday = 1_795_996_800.0;
        assert!(p.contains(monday + 7.5 * 3600.0), "08:30 local");
        assert!(!p.contains(monday + 17.5 * 3600.0), "18:30 local");
    }
}
