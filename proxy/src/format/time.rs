//! `%START_TIME(...)%` rendering: the strftime subset Envoy users write, plus
//! Envoy's `%E<n>S`/`%<n>f` sub-second extensions. Compiled once at config
//! time so rendering a request's start time never parses a pattern.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;

/// Envoy's default `%START_TIME%` pattern: `2026-11-25T16:40:01.123Z`.
pub const DEFAULT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    Hour,
    Minute,
    Second,
    /// Seconds with `n` fractional digits (`%E3S` → `05.123`).
    SecondFrac(u8),
    /// Fractional seconds alone, `n` digits (`%3f`; `%f` is 9).
    Frac(u8),
    Epoch,
    YearDay,
    WeekdayShort,
    MonthShort,
    Offset,
    Zone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<Piece>);

impl TimeFormat {
    pub fn compile(pattern: &str) -> Result<TimeFormat, ConfigError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let mut spec = String::new();
            // `%E<digits>S` and `%<digits>f` carry a precision.
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() || (d == 'E' && spec.is_empty()) {
                    spec.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(conv) = chars.next() else {
                return Err(ConfigError::new(
                    "",
                    format!("START_TIME format {pattern:?} ends in a lone %"),
                ));
            };
            let digits = |s: &str| -> Result<u8, ConfigError> {
                match s {
                    "" => Ok(9),
                    d => d
                        .parse::<u8>()
                        .ok()
                        .filter(|n| (1..=9).contains(n))
                        .ok_or_else(|| {
                            ConfigError::new(
                                "",
                                format!("START_TIME precision {d:?} must be 1 to 9"),
                            )
                        }),
                }
            };
            let piece = match (spec.as_str(), conv) {
                ("", '%') => {
                    lit.push('%');
                    continue;
                }
                ("", 'Y') => Piece::Year,
                ("", 'y') => Piece::Year2,
                ("", 'm') => Piece::Month,
                ("", 'd') => Piece::Day,
                ("", 'e') => Piece::DaySpace,
                ("", 'H') => Piece::Hour,
                ("", 'M') => Piece::Minute,
                ("", 'S') => Piece::Second,
                ("", 's') => Piece::Epoch,
                ("", 'j') => Piece::YearDay,
                ("", 'a') => Piece::WeekdayShort,
                ("", 'b') => Piece::MonthShort,
                ("", 'z') => Piece::Offset,
                ("", 'Z') => Piece::Zone,
                ("", 'T') => {
                    pieces.extend(take(&mut lit));
                    pieces.extend([
                        Piece::Hour,
                        Piece::Lit(":".into()),
                        Piece::Minute,
                        Piece::Lit(":".into()),
                        Piece::Second,
                    ]);
                    continue;
                }
                ("", 'F') => {
                    pieces.extend(take(&mut lit));
                    pieces.extend([
                        Piece::Year,
                        Piece::Lit("-".into()),
                        Piece::Month,
                        Piece::Lit("-".into()),
                        Piece::Day,
                    ]);
                    continue;
                }
                (s, 'S') if s.starts_with('E') => Piece::SecondFrac(digits(&s[1..])?),
                (s, 'f') if !s.starts_with('E') => Piece::Frac(digits(s)?),
                (s, c) => {
                    return Err(ConfigError::new(
                        "",
                        format!("START_TIME conversion %{s}{c} is not supported by trellis"),
                    ))
                }
            };
            pieces.extend(take(&mut lit));
            pieces.push(piece);
        }
        pieces.extend(take(&mut lit));
        Ok(TimeFormat(pieces))
    }

    /// Renders `t` in UTC, as Envoy's access logs do.
    pub fn render(&self, t: SystemTime, out: &mut String) {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let nanos = d.subsec_nanos();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, day) = civil(days as i64);
        for p in &self.0 {
            let _ = match p {
                Piece::Lit(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Piece::Year => write!(out, "{y:04}"),
                Piece::Year2 => write!(out, "{:02}", y.rem_euclid(100)),
                Piece::Month => write!(out, "{m:02}"),
                Piece::Day => write!(out, "{day:02}"),
                Piece::DaySpace => write!(out, "{day:2}"),
                Piece::Hour => write!(out, "{:02}", rem / 3600),
                Piece::Minute => write!(out, "{:02}", rem % 3600 / 60),
                Piece::Second => write!(out, "{:02}", rem % 60),
                Piece::SecondFrac(n) => {
                    let _ = write!(out, "{:02}.", rem % 60);
                    frac(out, nanos, *n)
                }
                Piece::Frac(n) => frac(out, nanos, *n),
                Piece::Epoch => write!(out, "{secs}"),
                Piece::YearDay => write!(out, "{:03}", days as i64 - days_from_civil(y, 1, 1) + 1),
                Piece::WeekdayShort => {
                    const W: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
                    out.push_str(W[(days % 7) as usize]);
                    Ok(())
                }
                Piece::MonthShort => {
                    const M: [&str; 12] = [
                        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                        "Nov", "Dec",
                    ];
                    out.push_str(M[(m as usize).saturating_sub(1) % 12]);
                    Ok(())
                }
                Piece::Offset => {
                    out.push_str("+0000");
                    Ok(())
                }
                Piece::Zone => {
                    out.push_str("UTC");
                    Ok(())
                }
            };
        }
    }
}

fn take(lit: &mut String) -> Option<Piece> {
    (!lit.is_empty()).then(|| Piece::Lit(std::mem::take(lit)))
}

fn frac(out: &mut String, nanos: u32, digits: u8) -> std::fmt::Result {
    let scaled = nanos / 10u32.pow(9 - u32::from(digits));
    write!(out, "{scaled:0width$}", width = usize::from(digits))
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32, pattern: &str) -> String {
        let mut s = String::new();
        TimeFormat::compile(pattern)
            .unwrap()
            .render(UNIX_EPOCH + Duration::new(secs, nanos), &mut s);
        s
    }

    #[test]
    fn default_matches_envoy() {
        // 2026-11-25T16:40:01.123Z
        assert_eq!(
            at(1_795_624_801, 123_456_789, DEFAULT),
            "2026-11-25T16:40:01.123Z"
        );
        assert_eq!(at(0, 0, DEFAULT), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            at(951_782_400, 0, "%F %T %j %a %b %s"),
            "2000-02-29 00:00:00 060 Tue Feb 951782400"
        );
        assert_eq!(at(1, 5_000, "%6f|%f|%%|%z"), "000005|000005000|%|+0000");
    }

    #[test]
    fn unknown_conversions_are_refused() {
        assert!(TimeFormat::compile("%Q").is_err());
        assert!(TimeFormat::compile("%").is_err());
        assert!(TimeFormat::compile("%E0S").is_err());
    }
}
