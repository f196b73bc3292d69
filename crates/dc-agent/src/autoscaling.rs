//! Turning what the cell observes of an app's instances into the per-instance metric samples the
//! autoscaler decides on ([`switchyard_cell_core::autoscale`]). Pure: the caller scrapes the
//! instances' Prometheus endpoints, takes process accounting from node heartbeats, and passes
//! the time.
//!
//! - **concurrency**: the app's in-flight requests (a gauge each instance exposes), summed and
//!   divided by the instances observed;
//! - **response time**: the mean over the last interval, from two counters each instance
//!   exposes (requests served and the milliseconds they took): Σ Δms / Σ Δrequests;
//! - **CPU utilisation**: CPU seconds used over the interval per second, divided by the CPU
//!   the observed instances requested;
//! - **memory utilisation**: resident memory divided by the memory the instances requested.
//!
//! A counter that went backwards (the instance restarted) contributes nothing to that interval.

use std::collections::BTreeMap;

use switchyard_cell_core::autoscale::{Metric, MetricWindow, Sample};

use crate::model::{MetricsRecord, Resources};

/// How far back sample windows reach; policies look at most this far.
pub const WINDOW_MS: u64 = 15 * 60 * 1000;
/// The most samples kept per metric.
pub const MAX_SAMPLES: usize = 2_000;

/// The value of metric `name` in a Prometheus text exposition: the sum over its series (every
/// label set). `None` when no sample of that name is present or a value does not parse.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let rest = match rest.chars().next() {
            Some('{') => &rest[rest.find('}')? + 1..],
            Some(' ' | '\t') => rest,
            _ => continue,
        };
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        if !value.is_finite() {
            return None;
        }
        total = Some(total.unwrap_or(0.0) + value);
    }
    total
}

/// What was observed of one serving instance in one sampling round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub task_id: String,
    /// The body of its metrics endpoint, if the scrape succeeded.
    pub scrape: Option<String>,
    /// `(cpu_seconds, rss_bytes)` from its node's process accounting.
    pub usage: Option<(f64, u64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    requests: Option<f64>,
    request_ms: Option<f64>,
    cpu_seconds: Option<f64>,
}

/// Counters of the previous round, to turn counters into rates.
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    previous: BTreeMap<String, Counters>,
    previous_at_ms: Option<u64>,
}

fn delta(now: Option<f64>, before: Option<f64>) -> Option<f64> {
    let d = now? - before?;
    (d >= 0.0).then_some(d)
}

impl Sampler {
    /// One round: the metrics that could be computed from `observed`, per instance.
    pub fn sample(
        &mut self,
        now_ms: u64,
        metrics: &MetricsRecord,
        per_instance: Resources,
        observed: &[Observation],
    ) -> BTreeMap<Metric, f64> {
        let mut out = BTreeMap::new();
        let n = observed.len();
        if n == 0 {
            self.previous.clear();
            self.previous_at_ms = Some(now_ms);
            return out;
        }
        let value = |o: &Observation, name: &str| {
            if name.is_empty() { None } else { o.scrape.as_deref().and_then(|t| prometheus_value(t, name)) }
        };
        let in_flight: Vec<f64> = observed.iter().filter_map(|o| value(o, &metrics.concurrency)).collect();
        if !in_flight.is_empty() {
            // Instances that did not answer count as carrying the same load as the others.
            out.insert(Metric::Concurrency, in_flight.iter().sum::<f64>() / in_flight.len() as f64);
        }
        let now: BTreeMap<String, Counters> = observed
            .iter()
            .map(|o| {
                let c = Counters {
                    requests: value(o, &metrics.requests_total),
                    request_ms: value(o, &metrics.request_ms_total),
                    cpu_seconds: o.usage.map(|u| u.0),
                };
                (o.task_id.clone(), c)
            })
            .collect();
        let (mut requests, mut ms, mut cpu, mut cpu_tasks) = (0.0, 0.0, 0.0, 0usize);
        for (id, c) in &now {
            let Some(p) = self.previous.get(id) else { continue };
            if let (Some(r), Some(m)) = (delta(c.requests, p.requests), delta(c.request_ms, p.request_ms)) {
                requests += r;
                ms += m;
            }
            if let Some(d) = delta(c.cpu_seconds, p.cpu_seconds) {
                cpu += d;
                cpu_tasks += 1;
            }
        }
        if requests > 0.0 {
            out.insert(Metric::ResponseTimeMs, ms / requests);
        }
        if let Some(before) = self.previous_at_ms.filter(|b| *b < now_ms)
            && cpu_tasks > 0
            && per_instance.cpu_millis > 0
        {
            let secs = (now_ms - before) as f64 / 1000.0;
            let requested = cpu_tasks as f64 * per_instance.cpu_millis as f64 / 1000.0;
            out.insert(Metric::CpuUtilization, cpu / secs / requested);
        }
        let rss: Vec<u64> = observed.iter().filter_map(|o| o.usage.map(|u| u.1)).collect();
        if !rss.is_empty() && per_instance.mem_mib > 0 {
            let requested = rss.len() as f64 * per_instance.mem_mib as f64 * 1024.0 * 1024.0;
            out.insert(Metric::MemoryUtilization, rss.iter().sum::<u64>() as f64 / requested);
        }
        self.previous = now;
        self.previous_at_ms = Some(now_ms);
        out
    }
}

/// Appends one round's values to the windows, dropping what is older than [`WINDOW_MS`].
pub fn record(windows: &mut BTreeMap<Metric, MetricWindow>, now_ms: u64, values: &BTreeMap<Metric, f64>) {
    for (metric, value) in values {
        windows.entry(*metric).or_default().samples.push(Sample { t_ms: now_ms, value: *value });
    }
    let from = now_ms.saturating_sub(WINDOW_MS);
    for w in windows.values_mut() {
        w.samples.retain(|s| s.t_ms >= from);
        if w.samples.len() > MAX_SAMPLES {
            let extra = w.samples.len() - MAX_SAMPLES;
            w.samples.drain(..extra);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP in_flight Requests being served.\n# TYPE in_flight gauge\n\
                        in_flight{app=\"web\",instance=\"a\"} 3\nin_flight{app=\"web\",instance=\"b\"} 2.5\n\
                        in_flight_total 99\nrequests_total 120 1700000000000\nrequest_ms_total 2400\n";

    #[test]
    fn prometheus_values_sum_series_and_ignore_lookalikes() {
        assert_eq!(prometheus_value(TEXT, "in_flight"), Some(5.5));
        assert_eq!(prometheus_value(TEXT, "in_flight_total"), Some(99.0));
        assert_eq!(prometheus_value(TEXT, "requests_total"), Some(120.0), "a timestamp is not the value");
        assert_eq!(prometheus_value(TEXT, "absent"), None);
        assert_eq!(prometheus_value("x NaN\n", "x"), None);
        assert_eq!(prometheus_value("x{a=\"1\" 3\n", "x"), None, "an unterminated label set is not a value");
    }

    fn metrics() -> MetricsRecord {
        MetricsRecord {
            path: "/metrics".into(),
            concurrency: "in_flight".into(),
            requests_total: "requests_total".into(),
            request_ms_total: "request_ms_total".into(),
        }
    }

    fn obs(id: &str, in_flight: f64, requests: f64, ms: f64, cpu: f64, rss_mib: u64) -> Observation {
        Observation {
            task_id: id.into(),
            scrape: Some(format!("in_flight {in_flight}\nrequests_total {requests}\nrequest_ms_total {ms}\n")),
            usage: Some((cpu, rss_mib * 1024 * 1024)),
        }
    }

    #[test]
    fn rates_come_from_counter_deltas_per_instance() {
        let mut s = Sampler::default();
        let per = Resources::new(500, 128, 0);
        let first = s.sample(
            10_000,
            &metrics(),
            per,
            &[obs("a", 4.0, 100.0, 1000.0, 1.0, 64), obs("b", 2.0, 50.0, 500.0, 2.0, 32)],
        );
        assert_eq!(first[&Metric::Concurrency], 3.0);
        assert!(!first.contains_key(&Metric::ResponseTimeMs), "no rate from a single round");
        assert!(!first.contains_key(&Metric::CpuUtilization));
        assert_eq!(first[&Metric::MemoryUtilization], 96.0 / 256.0);

        // 10 s later: 60 requests took 1,800 ms; 2.5 cpu-seconds over 10 s on 2 x 0.5 cpu.
        let second = s.sample(
            20_000,
            &metrics(),
            per,
            &[obs("a", 1.0, 140.0, 2400.0, 2.0, 64), obs("b", 1.0, 70.0, 900.0, 3.5, 32)],
        );
        assert_eq!(second[&Metric::ResponseTimeMs], 1800.0 / 60.0);
        assert!((second[&Metric::CpuUtilization] - 0.25).abs() < 1e-9, "{second:?}");
        assert_eq!(second[&Metric::Concurrency], 1.0);

        // b restarted (its counters went back): only a's interval counts.
        let third = s.sample(
            30_000,
            &metrics(),
            per,
            &[obs("a", 0.0, 150.0, 2500.0, 2.5, 64), obs("b", 0.0, 5.0, 50.0, 0.1, 32)],
        );
        assert_eq!(third[&Metric::ResponseTimeMs], 10.0);
        assert!((third[&Metric::CpuUtilization] - 0.1).abs() < 1e-9, "{third:?}");
        assert!(s.sample(40_000, &metrics(), per, &[]).is_empty());
    }

    #[test]
    fn windows_keep_recent_samples_only() {
        let mut w = BTreeMap::new();
        record(&mut w, 1_000, &BTreeMap::from([(Metric::Concurrency, 1.0)]));
        record(&mut w, 1_000 + WINDOW_MS, &BTreeMap::from([(Metric::Concurrency, 2.0)]));
        record(&mut w, 2_000 + WINDOW_MS, &BTreeMap::from([(Metric::Concurrency, 3.0)]));
        let values: Vec<f64> = w[&Metric::Concurrency].samples.iter().map(|s| s.value).collect();
        assert_eq!(values, [2.0, 3.0]);
    }
}
