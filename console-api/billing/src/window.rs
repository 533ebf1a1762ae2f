//! Metering windows, billing periods and validated time ranges.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// Usage is recorded per network, meter and one-hour window.
pub const WINDOW_SECONDS: i64 = 3600;

/// Time ranges asked of the usage and monitoring APIs are at most this long.
pub const MAX_RANGE_DAYS: i64 = 400;

/// The start of the window containing `t` (unix seconds).
pub fn window_start(t: i64) -> i64 {
    t.div_euclid(WINDOW_SECONDS) * WINDOW_SECONDS
}

/// One invalid query parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeError {
    pub field: &'static str,
    pub message: String,
}

fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, RangeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| RangeError {
            field,
            message: format!(
                "{text:?} is not an RFC 3339 time ({err}); write e.g. 2026-11-01T00:00:00Z"
            ),
        })
}

/// `[from, to)` from two RFC 3339 query parameters: both present, `from < to`, at most
/// [`MAX_RANGE_DAYS`] long. Every problem is reported at once.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Vec<RangeError>> {
    let mut errors = Vec::new();
    let from = match from {
        Some(text) => parse_time("from", text).map_err(|e| errors.push(e)).ok(),
        None => {
            errors.push(RangeError {
                field: "from",
                message: "required (RFC 3339, e.g. 2026-11-01T00:00:00Z)".into(),
            });
            None
        }
    };
    let to = match to {
        Some(text) => parse_time("to", text).map_err(|e| errors.push(e)).ok(),
        None => {
            errors.push(RangeError {
                field: "to",
                message: "required (RFC 3339, e.g. 2026-12-01T00:00:00Z)".into(),
            });
            None
        }
    };
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from {
            errors.push(RangeError {
                field: "to",
                message: "must be after `from`".into(),
            });
        } else if (to - from).num_days() > MAX_RANGE_DAYS {
            errors.push(RangeError {
                field: "to",
                message: format!("the range may span at most {MAX_RANGE_DAYS} days"),
            });
        }
        if errors.is_empty() {
            return Ok((from, to));
        }
    }
    Err(errors)
}

/// A calendar-month billing period, `YYYY-MM` (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub year: i32,
    pub month: u32,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period, String> {
        let invalid = || format!("{text:?} is not a billing period; write YYYY-MM, e.g. 2026-11");
        let (year, month) = text.split_once('-').ok_or_else(invalid)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(invalid());
        }
        let year: i32 = year.parse().map_err(|_| invalid())?;
        let month: u32 = month.parse().map_err(|_| invalid())?;
        if !(2000..=9998).contains(&year) || !(1..=12).contains(&month) {
            return Err(invalid());
        }
        Ok(Period { year, month })
    }

    pub fn containing(t: DateTime<Utc>) -> Period {
        Period {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        month_start(self.year, self.month)
    }

    pub fn end(self) -> DateTime<Utc> {
        if self.month == 12 {
            month_start(self.year + 1, 1)
        } else {
            month_start(self.year, self.month + 1)
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| Utc.from_utc_datetime(&naive))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_hours() {
        assert_eq!(window_start(7199), 3600);
        assert_eq!(window_start(7200), 7200);
        assert_eq!(window_start(-1), -3600);
    }

    #[test]
    fn ranges_are_validated_with_every_problem() {
        let (from, to) = parse_range(
            Some("2026-11-01T00:00:00Z"),
            Some("2026-11-02T00:00:00+01:00"),
        )
        .unwrap();
        assert_eq!((to - from).num_hours(), 23);
        let errors = parse_range(Some("yesterday"), None).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].field, "from");
        assert!(errors[0].message.contains("RFC 3339"));
        let backwards =
            parse_range(Some("2026-11-02T00:00:00Z"), Some("2026-11-01T00:00:00Z")).unwrap_err();
        assert_eq!(backwards[0].message, "must be after `from`");
        let long =
            parse_range(Some("2020-01-01T00:00:00Z"), Some("2026-01-01T00:00:00Z")).unwrap_err();
        assert!(long[0].message.contains("400 days"));
    }

    #[test]
    fn periods_are_calendar_months() {
        let period = Period::parse("2026-12").unwrap();
        assert_eq!(period.to_string(), "2026-12");
        assert_eq!(period.start().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(period.end().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        for bad in ["2026-13", "2026-1", "26-11", "november", "2026-00", ""] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }
}
