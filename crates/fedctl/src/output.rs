//! Presentation: tables for people, JSON for scripts, and timestamps.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

pub fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("API messages serialize")
}

/// `2026-11-22T02:33:27.123Z` from milliseconds since the Unix epoch; `-` for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}

/// Milliseconds since the Unix epoch of `2026-11-28T02:00:00Z` (UTC, seconds optional,
/// fractions not accepted); the inverse of [`time`] to the second.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a UTC time like 2026-11-28T02:00:00Z");
    let t = text.trim().strip_suffix('Z').ok_or_else(bad)?;
    let (date, clock) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let c: Vec<i64> = clock.split(':').map(|x| x.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let [year, month, day] = d[..] else { return Err(bad()) };
    let (hour, minute, second) = match c[..] {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    u64::try_from(secs * 1000).map_err(|_| bad())
}

/// `90s`, `30m`, `2h` or `1d` in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 2h or 1d");
    let unit = match t.chars().last() {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    n.checked_mul(unit).ok_or_else(bad)
}

pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { format!("{:.1}s", ms as f64 / 1000.0) }
}

/// What `switchover status ID --watch` prints each round: the operation's progress line and,
/// for an evacuation, one line per group that is not pending (bar: the target's traffic share).
pub fn progress(o: &switchyard_proto::operator::v1::Operation, now_ms: u64) -> String {
    let mut out = progress_line(o, now_ms);
    for g in o.groups.iter().filter(|g| g.status != "pending") {
        const WIDTH: u32 = 10;
        let filled = (g.target_percent * WIDTH / 100).min(WIDTH);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
        let line = format!(
            "\n  {:<20} {:<15} {:<11} [{bar}] {:>3}%  {}",
            g.group, g.status, g.phase, g.target_percent, g.detail
        );
        out.push_str(line.trim_end());
    }
    let pending = o.groups.iter().filter(|g| g.status == "pending").count();
    if pending > 0 {
        out.push_str(&format!("\n  {pending} group(s) pending"));
    }
    out
}

/// One line of `switchover status ID --watch`: phase, a bar of the phase's time against its
/// budget, the whole operation's time against its prediction, and what it waits for.
pub fn progress_line(o: &switchyard_proto::operator::v1::Operation, now_ms: u64) -> String {
    const WIDTH: u64 = 20;
    let in_phase = now_ms.saturating_sub(o.phase_started_at_ms);
    let total = now_ms.saturating_sub(o.created_at_ms);
    let filled = (in_phase * WIDTH).checked_div(o.phase_budget_ms).map_or(WIDTH, |f| f.min(WIDTH));
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
    let over = if o.phase_budget_ms > 0 && in_phase > o.phase_budget_ms { " OVER BUDGET" } else { "" };
    let state = if !o.paused_by.is_empty() {
        format!("PAUSED by {}", o.paused_by)
    } else if o.blocker.is_empty() {
        String::new()
    } else {
        format!("waiting: {}", o.blocker)
    };
    format!(
        "{} {} {}→{}  {:<11} [{bar}] {} of {}{over}  total {} of ~{}  {state}",
        o.id,
        o.group,
        o.from_site,
        o.to_site,
        o.phase,
        duration_ms(in_phase),
        duration_ms(o.phase_budget_ms),
        duration_ms(total),
        duration_ms(o.predicted_total_ms),
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_budget_use_pauses_and_overruns() {
        let mut o = switchyard_proto::operator::v1::Operation {
            id: "op-7".into(),
            group: "crm-web".into(),
            from_site: "site-1".into(),
            to_site: "site-2".into(),
            phase: "Verifying".into(),
            created_at_ms: 10_000,
            phase_started_at_ms: 40_000,
            phase_budget_ms: 3_000,
            predicted_total_ms: 49_000,
            blocker: "verify window: 1500 of 3000 ms healthy".into(),
            ..Default::default()
        };
        let line = progress_line(&o, 41_500);
        assert_eq!(
            line,
            "op-7 crm-web site-1→site-2  Verifying   [##########..........] 1.5s of 3.0s  total 31.5s of ~49.0s  \
             waiting: verify window: 1500 of 3000 ms healthy"
        );
        assert!(progress_line(&o, 50_000).contains("[####################] 10.0s of 3.0s OVER BUDGET"));
        o.paused_by = "operator:alice: CAB hold".into();
        assert!(progress_line(&o, 41_500).ends_with("PAUSED by operator:alice: CAB hold"));
    }

    #[test]
    fn an_evacuations_progress_has_a_line_per_started_group() {
        use switchyard_proto::operator::v1::GroupProgress;
        let g = |group: &str, status: &str, percent: u32| GroupProgress {
            group: group.into(),
            status: status.into(),
            phase: if status == "running" { "Shifting".into() } else { String::new() },
            target_percent: percent,
            detail: String::new(),
            ..Default::default()
        };
        let o = switchyard_proto::operator::v1::Operation {
            id: "evac-9".into(),
            group: "3 groups".into(),
            phase: "Moving".into(),
            groups: vec![g("db", "succeeded", 100), g("api", "running", 50), g("web", "pending", 0)],
            ..Default::default()
        };
        let text = progress(&o, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("db") && lines[1].contains("[##########] 100%"), "{text}");
        assert!(lines[2].contains("api") && lines[2].contains("Shifting") && lines[2].contains("[#####.....]  50%"));
        assert_eq!(lines[3], "  1 group(s) pending");
    }

    #[test]
    fn parses_what_it_prints_and_refuses_the_rest() {
        for ms in [951_782_400_000, 1_795_314_807_000] {
            assert_eq!(parse_time(&time(ms).replace(".000", "")).unwrap(), ms, "{ms}");
        }
        assert_eq!(parse_time("2026-11-28T02:00Z").unwrap(), parse_time("2026-11-28T02:00:00Z").unwrap());
        for bad in ["2026-11-28 02:00:00Z", "2026-11-28T02:00:00", "2026-13-01T00:00:00Z", "tomorrow"] {
            assert!(parse_time(bad).unwrap_err().contains("is not a UTC time"), "{bad}");
        }
        assert_eq!(parse_duration("30m").unwrap(), 1_800_000);
        assert_eq!(parse_duration("1d").unwrap(), 86_400_000);
        assert!(parse_duration("30 minutes").is_err() && parse_duration("m").is_err());
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(time(1_795_314_807_123), "2026-11-22T02:33:27.123Z");
    }
}
