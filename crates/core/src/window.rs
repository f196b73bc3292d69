//! Change windows: the weekly UTC intervals in which planned moves may start. With none
//! configured, planned moves may start at any time. Rollbacks, automatic recovery and the
//! switchovers of an evacuation that started inside a window are not held by them.

use serde::{Deserialize, Serialize};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MS: u64 = 86_400_000;

/// A weekly window, `sat,sun 01:00-05:00` (UTC). An end at or before the start runs past
/// midnight into the next day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeWindow {
    /// Days the window opens on, 0 = Monday … 6 = Sunday, ascending.
    pub days: Vec<u8>,
    /// Minutes after midnight UTC.
    pub start_minute: u32,
    pub end_minute: u32,
}

impl ChangeWindow {
    /// Whether Unix time `at_ms` falls inside the window.
    pub fn contains(&self, at_ms: u64) -> bool {
        let day = ((at_ms / DAY_MS + 3) % 7) as u8; // 1970-01-01 was a Thursday.
        let minute = ((at_ms % DAY_MS) / 60_000) as u32;
        let yesterday = (day + 6) % 7;
        if self.end_minute > self.start_minute {
            self.days.contains(&day) && minute >= self.start_minute && minute < self.end_minute
        } else {
            (self.days.contains(&day) && minute >= self.start_minute)
                || (self.days.contains(&yesterday) && minute < self.end_minute)
        }
    }
}

/// `sun 13:05 UTC` for Unix time `at_ms`.
pub fn describe_instant(at_ms: u64) -> String {
    let day = ((at_ms / DAY_MS + 3) % 7) as usize;
    let minute = (at_ms % DAY_MS) / 60_000;
    format!("{} {:02}:{:02} UTC", DAYS[day], minute / 60, minute % 60)
}

impl std::fmt::Display for ChangeWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| DAYS[*d as usize]).collect();
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{} {}-{}", days.join(","), hm(self.start_minute), hm(self.end_minute))
    }
}

impl std::str::FromStr for ChangeWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("change window {s:?}: {why}; write it like \"sat,sun 01:00-05:00\" (UTC)");
        let (days, times) = s.trim().split_once(' ').ok_or_else(|| bad("days and times are separated by a space"))?;
        let mut out = Vec::new();
        for d in days.split(',') {
            let d = d.trim().to_ascii_lowercase();
            let day = DAYS.iter().position(|x| *x == d).ok_or_else(|| bad(&format!("{d:?} is not a day (mon…sun)")))?;
            out.push(day as u8);
        }
        out.sort_unstable();
        out.dedup();
        let (start, end) = times.trim().split_once('-').ok_or_else(|| bad("the times are START-END"))?;
        let minute = |t: &str| -> Result<u32, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(|| bad(&format!("{t:?} is not HH:MM")))?;
            match (h.parse::<u32>(), m.parse::<u32>()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok(h * 60 + m),
                _ => Err(bad(&format!("{t:?} is not a time of day"))),
            }
        };
        let (start_minute, end_minute) = (minute(start)?, minute(end)?);
        if start_minute == end_minute {
            return Err(bad("it opens and closes at the same minute"));
        }
        Ok(ChangeWindow { days: out, start_minute, end_minute })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21 was a Saturday; 02:30 UTC that day.
    const SAT_0230: u64 = 1_795_228_200_000;

    #[test]
    fn windows_parse_print_and_contain_their_instants() {
        let w: ChangeWindow = "Sun,sat 01:00-05:00".parse().unwrap();
        assert_eq!(w.to_string(), "sat,sun 01:00-05:00");
        assert_eq!(describe_instant(SAT_0230), "sat 02:30 UTC");
        assert!(w.contains(SAT_0230));
        assert!(!w.contains(SAT_0230 + 3 * 3_600_000), "05:30 is after the window");
        assert!(w.contains(SAT_0230 + DAY_MS), "sunday too");
        assert!(!w.contains(SAT_0230 + 2 * DAY_MS), "not monday");
    }

    #[test]
    fn a_window_past_midnight_runs_into_the_next_day() {
        let w: ChangeWindow = "fri 22:00-02:00".parse().unwrap();
        assert!(w.contains(SAT_0230 - 60 * 60_000), "saturday 01:30 belongs to friday's window");
        assert!(!w.contains(SAT_0230), "02:30 is past its end");
        assert!(w.contains(SAT_0230 - 4 * 3_600_000), "friday 22:30");
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, why) in [
            ("sat", "separated by a space"),
            ("sat 1-2", "not HH:MM"),
            ("sat 25:00-26:00", "not a time of day"),
            ("caturday 01:00-02:00", "not a day"),
            ("sat 01:00-01:00", "same minute"),
        ] {
            let err = text.parse::<ChangeWindow>().unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
