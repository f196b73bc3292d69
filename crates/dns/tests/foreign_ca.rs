//! fed-dns must not take routing from a federator whose certificate comes from another CA: the
//! TLS handshake fails, it keeps retrying, and it keeps serving its last-known-good table.

mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use hickory_proto::rr::RecordType;
use switchyard_dns::{Args, Config, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_federator_from_another_ca_and_keeps_last_known_good() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let dir = tempfile::tempdir()?;
    let ours = Pki::generate(&dir.path().join("ours"), "federation ca")?;
    let rogue = Pki::generate(&dir.path().join("rogue"), "rogue ca")?;
    let state = state_dir(dir.path());
    std::fs::create_dir_all(&state)?;
    table::save(&state, &switchyard_dns::Table::from_proto(common::table(5, 5, "127.0.5.1"))?)?;

    let impostor = FakeFederator::start(&rogue.federator, common::table(9, 9, "127.0.9.9")).await?;
    let config = Config::from_args(&Args::try_parse_from(dns_args(&ours, impostor.addr, &state, false))?)?;
    let dns = switchyard_dns::spawn(config).await?;
    let addr = dns.local_addr();

    // Long enough for several reconnection attempts (200 + 400 + 800 + 1600 ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let reply = query_udp(addr, "crm-web.fed.local.", RecordType::A).await?;
        assert_eq!(addresses(&reply), ["127.0.5.1"], "still the last-known-good table");
        assert!(is_noerror_aa(&reply));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(soa_serial(&query_tcp(addr, "fed.local.", RecordType::SOA).await?), Some(5));
    assert!(impostor.calls().is_empty(), "no Watch call may get through the TLS handshake");
    assert_eq!(table::load(&state)?.map(|t| t.version()), Some(5), "the file is untouched");

    dns.shutdown().await?;
    impostor.stop().await?;
    Ok(())
}
