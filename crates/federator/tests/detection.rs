//! The leader's detection round on one replica, fed observations by hand: a group whose
//! provers see its whole site failing is left to the site's verdict, and declared on its own
//! once the site answers them again.

mod common;

use common::free_port;
use switchyard_core::Action;
use switchyard_core::dr::detect::{Health, Observation, Subject};
use switchyard_federator::node::{Federator, now_ms};

fn seen(observer: &str, domain: &str, subject: Subject, health: Health, at_ms: u64) -> Observation {
    Observation { observer: observer.into(), domain: domain.into(), subject, health, at_ms, detail: String::new() }
}

/// One round of reports at `at`: the federator and the cell find crm-web unreachable at site-1;
/// the federator and fed-dns see site-1 itself as given.
fn report(fed: &Federator, at: u64, site_to_federator: Health, site_to_dns: Health) {
    let site = || Subject::site("site-1");
    let group = || Subject::group("site-1", "crm-web");
    fed.observe(&seen("federator-1", "federator", site(), site_to_federator, at));
    fed.observe(&seen("dns-1", "dns", site(), site_to_dns, at));
    fed.observe(&seen("federator-1", "federator", group(), Health::Unhealthy, at));
    fed.observe(&seen("cell-site-1", "cell", group(), Health::Unhealthy, at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_failing_with_its_site_waits_for_the_sites_verdict() {
    let dir = tempfile::tempdir().unwrap();
    common::pki(dir.path(), [1]);
    let port = free_port();
    let running = switchyard_federator::start(common::config(dir.path(), 1, port, &[(1, port)], ""))
        .await
        .expect("replica starts");
    let fed = running.federator.clone();
    // The configuration's site and group are registered once the replica leads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fed.shared.read(|s| s.groups.contains_key("crm-web")) {
        assert!(std::time::Instant::now() < deadline, "crm-web never registered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Since 15 s ago (the window is 10 s), the federator sees site-1's ingress refuse and the
    // group unreachable through it; the cell reports the group unhealthy; fed-dns (the other
    // domain the site's verdict needs) still reaches the site.
    let start = now_ms() - 15_000;
    let now = now_ms();
    for at in [start, now - 500] {
        report(&fed, at, Health::Unhealthy, Health::Healthy);
    }
    let (declare, suspect) = fed.detection_round(now);
    assert!(declare.is_empty(), "the group is the site's failure showing through: {declare:?}");
    assert!(suspect.contains("site-1"), "the site is suspect (never a failover target): {suspect:?}");

    // The site answers the federator again while the group stays unreachable: its own failure.
    let later = now + 1_000;
    report(&fed, later, Health::Healthy, Health::Healthy);
    let (declare, _) = fed.detection_round(later);
    assert!(
        matches!(declare.as_slice(), [Action::DeclareGroupDown { site, group, .. }] if site == "site-1" && group == "crm-web"),
        "{declare:?}"
    );

    // And when fed-dns sees the site refuse too, the site is declared: one decision for all.
    let after = later + 11_000;
    for at in [later, after - 500] {
        report(&fed, at, Health::Unhealthy, Health::Unhealthy);
    }
    let (declare, _) = fed.detection_round(after);
    assert!(matches!(declare.as_slice(), [Action::DeclareSiteDown { site, .. }] if site == "site-1"), "{declare:?}");
    running.shutdown().await;
}
