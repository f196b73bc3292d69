//! The one behaviour battery every [`LoadBalancer`] passes: the fake in unit tests, real HAProxy
//! in `tests/haproxy.rs`. Panics with a description of the first broken expectation.

use std::net::IpAddr;

use super::{Endpoint, LbCommand, LoadBalancer, ServerState, sync_backend};

fn ep(name: &str, addr: IpAddr, port: u16, weight: u16, ready: bool) -> Endpoint {
    Endpoint { name: name.into(), addr, port, weight, ready }
}

fn summary(mut servers: Vec<ServerState>) -> Vec<(String, u16, u16, &'static str)> {
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    servers
        .into_iter()
        .map(|s| {
            let state = match (s.maintenance, s.draining) {
                (true, _) => "maint",
                (false, true) => "drain",
                (false, false) => "ready",
            };
            (s.name, s.port, s.weight, state)
        })
        .collect()
}

/// Runs the battery against `lb`, whose `backend` must exist and be empty. Uses ports
/// `base_port..base_port+3` on `addr` only as addresses (nothing needs to listen there).
pub async fn run<L: LoadBalancer>(lb: &L, backend: &str, addr: IpAddr, base_port: u16) {
    let s = |v: &[(&str, u16, u16, &'static str)]| -> Vec<(String, u16, u16, &'static str)> {
        v.iter().map(|(n, p, w, st)| (n.to_string(), *p, *w, *st)).collect()
    };
    let (p1, p2, p3) = (base_port, base_port + 1, base_port + 2);
    assert!(lb.servers(backend).await.expect("servers").is_empty(), "backend {backend} must start empty");
    assert!(lb.servers("no-such-backend").await.is_err(), "an unknown backend is an error");

    // New endpoints: ready ones take traffic, the other waits in maintenance.
    let want = [ep("t1", addr, p1, 10, true), ep("t2", addr, p2, 20, true), ep("t3", addr, p3, 10, false)];
    let report = sync_backend(lb, backend, &want).await.expect("sync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        summary(lb.servers(backend).await.unwrap()),
        s(&[("t1", p1, 10, "ready"), ("t2", p2, 20, "ready"), ("t3", p3, 10, "maint")])
    );

    // Idempotent.
    let report = sync_backend(lb, backend, &want).await.expect("sync");
    assert!(report.applied.is_empty() && report.failed.is_empty(), "second sync changed {:?}", report.applied);

    // Drain one, reweight one, enable the waiting one.
    let want = [ep("t1", addr, p1, 10, false), ep("t2", addr, p2, 5, true), ep("t3", addr, p3, 10, true)];
    let report = sync_backend(lb, backend, &want).await.expect("sync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        summary(lb.servers(backend).await.unwrap()),
        s(&[("t1", p1, 10, "drain"), ("t2", p2, 5, "ready"), ("t3", p3, 10, "ready")])
    );

    // Removing a server that still takes traffic is refused; the planner never asks for that.
    let direct = LbCommand::Remove { backend: backend.into(), server: "t2".into() };
    assert!(lb.execute(&direct).await.is_err(), "removal of a server in rotation must be refused");

    // A server moving to another port is replaced; one no longer wanted is removed.
    let want = [ep("t2", addr, p1, 5, true), ep("t3", addr, p3, 10, true)];
    let report = sync_backend(lb, backend, &want).await.expect("sync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(summary(lb.servers(backend).await.unwrap()), s(&[("t2", p1, 5, "ready"), ("t3", p3, 10, "ready")]));

    // Everything gone.
    let report = sync_backend(lb, backend, &[]).await.expect("sync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(lb.servers(backend).await.unwrap().is_empty());
}

#[cfg(test)]
mod tests {
    use super::super::{FakeLoadBalancer, LoadBalancer, sync_backend, sync_backend_keeping};
    use super::{ep, summary};

    #[tokio::test]
    async fn kept_servers_are_left_exactly_as_they_are() {
        let lb = FakeLoadBalancer::with_backends(&["be"]);
        let a = "127.0.0.1".parse().unwrap();
        sync_backend(&lb, "be", &[ep("t1", a, 1, 10, true), ep("t2", a, 2, 10, true)]).await.unwrap();
        // t1's state is unknown: it stays in rotation although it is not among the endpoints;
        // t2 is known and drained; t3 is new.
        let keep = vec!["t1".to_string()];
        let r = sync_backend_keeping(&lb, "be", &[ep("t2", a, 2, 10, false), ep("t3", a, 3, 10, true)], &keep)
            .await
            .unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        let got = summary(lb.servers("be").await.unwrap());
        let want: Vec<(String, u16, u16, &str)> =
            vec![("t1".into(), 1, 10, "ready"), ("t2".into(), 2, 10, "drain"), ("t3".into(), 3, 10, "ready")];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn fake_passes_the_battery() {
        let lb = FakeLoadBalancer::with_backends(&["be_web"]);
        super::run(&lb, "be_web", "127.0.0.1".parse().unwrap(), 20_000).await;
    }
}
