//! Memory of a federator holding a large federation: 50 sites × 5,000 groups (one app of two
//! instances each, home sites round-robin), every site's cell reporting its 100 groups'
//! instances on 20 nodes. One `federator` process; reports arrive over the real cell link, and
//! each simulated cell reads the desired state it is sent, as a real one does.
//!
//! Run: `cargo build --release -p switchyard-federator && cargo bench -p switchyard-federator --bench memory`
//! Prints the process's resident memory (VmRSS, and its peak VmHWM) and the size of a backup
//! (the snapshot format) of the committed state.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_proto::agent::v1 as agent;
use switchyard_proto::agent::v1::cell_link_client::CellLinkClient;
use switchyard_proto::common::v1 as common;
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

const SITES: usize = 50;
const GROUPS: usize = 5_000;
const NODES_PER_SITE: usize = 20;

fn site(i: usize) -> String {
    format!("dc-{i:02}")
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let mut text = format!(
        "node_id = 1\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nzone = \"fed.local.\"\n\
         [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/fed-1.pem\"\nkey = \"{c}/fed-1-key.pem\"\n",
        dir.join("data").display(),
        c = certs.display()
    );
    for i in 0..SITES {
        let _ = write!(text, "[[sites]]\nname = \"{}\"\ningress = [\"127.0.{}.1\"]\n", site(i), 10 + i);
    }
    for g in 0..GROUPS {
        let _ = write!(
            text,
            "[[groups]]\nname = \"app-{g:04}\"\ndns_name = \"app-{g:04}\"\nttl_s = 30\nhome_site = \"{}\"\n\
             [[groups.apps]]\nname = \"web\"\ncommand = \"sample-app\"\nargs = [\"--port\", \"$PORT\"]\ninstances = 2\n\
             resources = {{ cpu_millis = 250, mem_mib = 256 }}\n",
            site(g % SITES)
        );
    }
    let path = dir.join("fed-1.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn channel(addr: SocketAddr, bundle: &Bundle) -> Channel {
    loop {
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(bundle.client_tls("127.0.0.1"))
            .unwrap()
            .timeout(Duration::from_secs(60));
        if let Ok(ch) = ep.connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report(i: usize) -> agent::CellReport {
    let nodes = (0..NODES_PER_SITE)
        .map(|n| agent::NodeStatus {
            node_id: format!("{}-n{n:02}", site(i)),
            address: format!("127.0.{}.{}", 10 + i, n + 10),
            capacity: Some(common::Resources { cpu_millis: 64_000, mem_mib: 262_144, disk_mib: 0 }),
            allocated: Some(common::Resources { cpu_millis: 5_000, mem_mib: 5_120, disk_mib: 0 }),
            healthy: true,
            unschedulable: false,
        })
        .collect();
    let groups = (0..GROUPS)
        .filter(|g| g % SITES == i)
        .map(|g| agent::GroupStatus {
            group: format!("app-{g:04}"),
            applied_epoch: 0,
            replication_lag_ms: None,
            apps: vec![agent::AppStatus {
                app: "web".into(),
                desired: 2,
                instances: (0..2)
                    .map(|k| agent::InstanceStatus {
                        task_id: format!("app-{g:04}.web.{k}"),
                        node_id: format!("{}-n{:02}", site(i), (g + k) % NODES_PER_SITE),
                        address: format!("127.0.{}.{}", 10 + i, (g + k) % NODES_PER_SITE + 10),
                        port: 20_000 + k as u32,
                        pid: 10_000 + k as i64,
                        state: common::TaskState::Running as i32,
                        healthy: true,
                        restarts: 0,
                        message: String::new(),
                    })
                    .collect(),
                blocker: String::new(),
            }],
        })
        .collect();
    agent::CellReport { site: site(i), applied_epoch: 0, nodes, groups, sequence: 1 }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("bench CA").unwrap();
        let certs = dir.path().join("certs");
        ca.save(&certs).unwrap();
        ca.issue_to_dir(&certs, "fed-1", &Identity::new(Role::Federator, "fed-1").unwrap(), &["127.0.0.1".into()])
            .unwrap();
        let admin = ca.issue(&Identity::new(Role::Admin, "bench").unwrap(), &[]).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("federator");
        assert!(bin.exists(), "build the federator binary first: cargo build --release -p switchyard-federator");
        let log = std::fs::File::create(dir.path().join("fed-1.log")).unwrap();
        let mut child = std::process::Command::new(bin)
            .arg("--config")
            .arg(write_config(dir.path(), port))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        let base_rss = {
            tokio::time::sleep(Duration::from_millis(500)).await;
            status_kib(pid, "VmRSS:")
        };

        let mut api = OperatorClient::new(channel(addr, &admin).await);
        let t = Instant::now();
        loop {
            let s = api.get_status(pb::GetStatusRequest {}).await.map(|r| r.into_inner());
            if s.as_ref().is_ok_and(|s| s.groups as usize == GROUPS && s.sites as usize == SITES) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(600), "registration did not finish: {s:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("registered {SITES} sites and {GROUPS} groups in {:.1} s (one commit each)", t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let registered_rss = status_kib(pid, "VmRSS:");

        // Every site's cell reports once over its own link, with its own certificate.
        let mut links = Vec::new();
        for i in 0..SITES {
            let cell = ca.issue(&Identity::new(Role::Cell, site(i)).unwrap(), &[]).unwrap();
            let mut client = CellLinkClient::new(channel(addr, &cell).await)
                .max_encoding_message_size(switchyard_proto::MAX_MESSAGE_BYTES)
                .max_decoding_message_size(switchyard_proto::MAX_MESSAGE_BYTES);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let hello = agent::CellHello { site: site(i), agent_version: "bench".into(), applied_epoch: 0 };
            tx.send(agent::CellMessage { body: Some(agent::cell_message::Body::Hello(hello)) }).await.unwrap();
            tx.send(agent::CellMessage { body: Some(agent::cell_message::Body::Report(report(i))) }).await.unwrap();
            let mut stream = client.attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
            // Like a real cell, read every desired state the federator sends.
            let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
            links.push((tx, reader));
        }
        let t = Instant::now();
        loop {
            let sites = api.list_sites(pb::ListSitesRequest {}).await.unwrap().into_inner().sites;
            if sites.iter().filter(|s| s.report_age_ms >= 0).count() == SITES {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(300), "reports did not all commit");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = status_kib(pid, "VmRSS:");
        let hwm = status_kib(pid, "VmHWM:");
        let mut stream =
            api.take_snapshot(pb::TakeSnapshotRequest { reason: "size".into() }).await.unwrap().into_inner();
        let mut backup_bytes = 0;
        while let Some(chunk) = stream.message().await.unwrap() {
            backup_bytes += chunk.data.len();
        }
        println!("federator RSS at start (empty): {:.1} MiB", base_rss as f64 / 1024.0);
        println!("federator RSS with the sites and groups registered, no cell yet: {:.1} MiB", registered_rss as f64 / 1024.0);
        println!(
            "federator RSS holding {SITES} sites x {GROUPS} groups with every cell's report: {:.1} MiB (peak {:.1} MiB)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        println!("committed state as a snapshot: {:.1} MiB", backup_bytes as f64 / 1_048_576.0);
        for (tx, reader) in links {
            drop(tx);
            reader.abort();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!(
            "federator RSS after every cell disconnected: {:.1} MiB",
            status_kib(pid, "VmRSS:") as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}
