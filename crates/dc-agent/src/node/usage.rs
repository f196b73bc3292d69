//! Process accounting from `/proc`: CPU time and resident memory of a task's main process.

/// `(cpu_seconds, rss_bytes)` of process `pid`, or `None` if it is gone or unreadable.
pub fn of_process(pid: i64) -> Option<(f64, u64)> {
    let pid = u32::try_from(pid).ok().filter(|p| *p > 0)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse(&stat, &statm, clock_ticks(), page_size())
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as u64)
}

/// Parses `/proc/<pid>/stat` (utime and stime are fields 14 and 15, counted after the
/// parenthesised command name, which may itself contain spaces) and `/proc/<pid>/statm` (the
/// second field is resident pages).
fn parse(stat: &str, statm: &str, ticks_per_s: f64, page: u64) -> Option<(f64, u64)> {
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) as f64 / ticks_per_s, resident * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_even_with_spaces_in_the_command() {
        let stat = "4242 (my app) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 123 0 0";
        assert_eq!(parse(stat, "1000 300 20 1 0 50 0", 100.0, 4096), Some((3.0, 300 * 4096)));
        assert_eq!(parse("garbage", "1 2", 100.0, 4096), None);
    }

    #[test]
    fn reads_this_process() {
        let (cpu, rss) = of_process(i64::from(std::process::id())).expect("own /proc entry");
        assert!(cpu >= 0.0);
        assert!(rss > 1024 * 1024, "a test binary uses more than 1 MiB: {rss}");
        assert_eq!(of_process(0), None);
    }
}
