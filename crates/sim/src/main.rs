//! Runs simulation seeds: `switchyard-sim --seed N` replays one, `--seeds A..B` runs a range
//! (the long run). Exits non-zero on the first broken invariant, printing its replay command.

use std::process::ExitCode;
use std::time::Instant;

use switchyard_sim::{Options, run_seed};

const USAGE: &str = "usage: switchyard-sim [--seed N | --seeds A..B] [--steps N] [--replicas 3|5] [--groups N] [--no-faults] [--dr] [--repeat N]";

fn parse() -> Result<(Vec<u64>, Options, u32), String> {
    let mut opts = Options::default();
    let mut seeds = vec![0];
    let mut repeat = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        let num = |v: String, name: &str| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"));
        match a.as_str() {
            "--seed" => seeds = vec![num(value("--seed")?, "--seed")?],
            "--seeds" => {
                let v = value("--seeds")?;
                let (a, b) = v.split_once("..").ok_or(format!("--seeds {v:?} must look like 0..1000"))?;
                let (a, b) = (num(a.into(), "--seeds")?, num(b.into(), "--seeds")?);
                if a >= b {
                    return Err(format!("--seeds {v:?} is empty"));
                }
                seeds = (a..b).collect();
            }
            "--steps" => opts.steps = num(value("--steps")?, "--steps")? as u32,
            "--replicas" => {
                opts.replicas = num(value("--replicas")?, "--replicas")?;
                if !matches!(opts.replicas, 1 | 3 | 5) {
                    return Err("--replicas must be 1, 3 or 5".into());
                }
            }
            "--groups" => opts.groups = num(value("--groups")?, "--groups")?.max(1) as usize,
            "--no-faults" => opts.faults = false,
            "--dr" => opts.dr = true,
            "--repeat" => repeat = num(value("--repeat")?, "--repeat")?.clamp(1, 1000) as u32,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok((seeds, opts, repeat))
}

/// Runs one seed `repeat` times and compares every run with the first: Err says where the first
/// run that differed parted from it.
fn replay(seed: u64, opts: &Options, repeat: u32) -> Result<(), String> {
    let first = run_seed(seed, opts).map_err(|v| v.to_string())?;
    for n in 2..=repeat {
        let again = run_seed(seed, opts).map_err(|v| v.to_string())?;
        if again.digest == first.digest {
            continue;
        }
        let at = first.trace.iter().zip(&again.trace).position(|(a, b)| a != b);
        let detail = match at {
            Some(i) => format!(
                "event {i} differs:\n  run 1: {}\n  run {n}: {}\nbefore it:\n  {}",
                first.trace[i],
                again.trace[i],
                first.trace[i.saturating_sub(8)..i].join("\n  ")
            ),
            None if first.trace.len() != again.trace.len() => {
                format!("traces agree up to {} events, then one run has more", first.trace.len().min(again.trace.len()))
            }
            None => "the traces agree; the final committed states differ".to_string(),
        };
        return Err(format!("seed {seed}: run {n} of {repeat} differs from run 1: {detail}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let (seeds, opts, repeat) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if repeat > 1 {
        for &seed in &seeds {
            if let Err(e) = replay(seed, &opts, repeat) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        println!("{} seeds replayed identically {repeat} times each", seeds.len());
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let (mut acked, mut ops, mut virtual_ms) = (0, 0, 0);
    let (mut entries, mut writes) = (0, 0);
    let mut dr = switchyard_sim::DrSummary::default();
    for &seed in &seeds {
        match run_seed(seed, &opts) {
            Ok(s) => {
                acked += s.acked_writes;
                ops += s.operations_started;
                virtual_ms += s.virtual_ms;
                entries += s.write_entries;
                writes += s.writes_in_entries;
                dr.site_kills += s.dr.site_kills;
                dr.federator_cuts += s.dr.federator_cuts;
                dr.federator_cuts_quiet += s.dr.federator_cuts_quiet;
                dr.declarations += s.dr.declarations;
                dr.failovers += s.dr.failovers;
                dr.brake_trips += s.dr.brake_trips;
                dr.reclaims += s.dr.reclaims;
                for (rule, n) in &s.dr.held {
                    *dr.held.entry(rule.clone()).or_default() += n;
                }
                if seeds.len() == 1 {
                    // The trace is thousands of lines; its digest stands for it.
                    println!("{:#?}", switchyard_sim::Summary { trace: Vec::new(), ..s });
                }
            }
            Err(v) => {
                eprintln!("{v}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds passed in {:.1} s: {:.0} virtual seconds, {acked} acknowledged writes, {ops} operations; \
         {writes} writes committed in {entries} log entries",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        virtual_ms as f64 / 1000.0
    );
    if opts.dr {
        println!(
            "disaster recovery: {} site kills, {} declarations, {} automatic failovers, {} brake trips, {} reclaims; \
             {} federator-only cuts, {} of them of a live site that declared nothing; held at the end: {:?}",
            dr.site_kills,
            dr.declarations,
            dr.failovers,
            dr.brake_trips,
            dr.reclaims,
            dr.federator_cuts,
            dr.federator_cuts_quiet,
            dr.held
        );
    }
    ExitCode::SUCCESS
}
