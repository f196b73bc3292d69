//! A three-replica federator cluster as real processes on loopback.
//!
//! Run: `cargo build --release -p switchyard-federator && cargo bench -p switchyard-federator --bench cluster`
//!
//! Measures:
//! - the operator API's round trip without a commit (`GetStatus`), one client;
//! - durable commits per second (each write is a Raft commit made durable by a quorum, applied
//!   and audited), with 1 and with 64 concurrent clients, all sent to the leader;
//! - failover: the time from SIGKILL of the leader to the first write accepted by a new leader
//!   (a client retrying every 10 ms against a surviving replica), for three kills.
//!
//! Raft timing is the loopback tuning below (heartbeat 50 ms, election timeout 150-300 ms);
//! the federator's defaults (250 ms, 1-2 s) give proportionally slower failover.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

const WRITES_SINGLE: usize = 300;
const WRITES_PER_CLIENT: usize = 100;
const CLIENTS: usize = 64;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `BENCH_WRITES_IN_FLIGHT` and `BENCH_MAX_WRITES_PER_ENTRY` override the federator's write
/// batching (`1` and `1` commit one write per entry, as before batching existed).
fn batching() -> String {
    let mut lines = String::new();
    for (var, key) in
        [("BENCH_WRITES_IN_FLIGHT", "writes_in_flight"), ("BENCH_MAX_WRITES_PER_ENTRY", "max_writes_per_entry")]
    {
        if let Ok(v) = std::env::var(var) {
            let n: usize = v.parse().unwrap_or_else(|_| panic!("{var}={v:?} is not a number"));
            lines.push_str(&format!("{key} = {n}\n"));
        }
    }
    lines
}

fn write_config(dir: &Path, id: u64, ports: &[u16; 3]) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let peers: String = (1..=3u64)
        .filter(|p| *p != id)
        .map(|p| format!("[[peers]]\nnode_id = {p}\naddress = \"127.0.0.1:{}\"\n", ports[(p - 1) as usize]))
        .collect();
    let text = format!(
        "node_id = {id}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nzone = \"fed.local.\"\n{peers}\
         [tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/fed-{id}.pem\"\nkey = \"{certs}/fed-{id}-key.pem\"\n\
         [raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 150\nelection_timeout_max_ms = 300\n{batching}\
         [[sites]]\nname = \"site-1\"\ningress = [\"127.0.1.1\"]\n\
         [[groups]]\nname = \"crm-web\"\ndns_name = \"crm-web\"\nttl_s = 5\nhome_site = \"site-1\"\n\
         [[groups.apps]]\nname = \"web\"\ncommand = \"sample-app\"\ninstances = 2\nresources = {{ cpu_millis = 100, mem_mib = 64 }}\n",
        batching = batching(),
        port = ports[(id - 1) as usize],
        data = dir.join(format!("data-{id}")).display(),
        certs = certs.display()
    );
    let path = dir.join(format!("fed-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(dir: &Path, id: u64, ports: &[u16; 3]) -> std::process::Child {
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("federator");
    assert!(bin.exists(), "build the federator binary first: cargo build --release -p switchyard-federator");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("fed-{id}.log"))).unwrap();
    std::process::Command::new(bin)
        .arg("--config")
        .arg(write_config(dir, id, ports))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn client(addr: SocketAddr, bundle: &Bundle) -> OperatorClient<Channel> {
    loop {
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(bundle.client_tls("127.0.0.1"))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5));
        if let Ok(ch) = ep.connect().await {
            return OperatorClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader(apis: &mut [(u64, OperatorClient<Channel>)]) -> u64 {
    loop {
        for (_, api) in apis.iter_mut() {
            if let Ok(s) = api.get_status(pb::GetStatusRequest {}).await {
                let s = s.into_inner();
                if s.leader_id != 0 && s.groups == 1 {
                    return s.leader_id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(api: &mut OperatorClient<Channel>, n: usize) -> bool {
    api.set_freeze(pb::SetFreezeRequest { scope: "group:crm-web".into(), reason: format!("bench {n}"), duration_s: 0 })
        .await
        .is_ok()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir_path = tmp.path().to_path_buf();
        // BENCH_KEEP_LOGS=1 keeps the replicas' directories (logs, data) for inspection.
        let _tmp = if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
            eprintln!("replica logs and data kept in {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        let ca = CertAuthority::generate("bench CA").unwrap();
        let certs = dir_path.as_path().join("certs");
        ca.save(&certs).unwrap();
        for id in 1..=3 {
            let name = format!("fed-{id}");
            ca.issue_to_dir(&certs, &name, &Identity::new(Role::Federator, &name).unwrap(), &["127.0.0.1".into()])
                .unwrap();
        }
        let admin = ca.issue(&Identity::new(Role::DrAdmin, "bench").unwrap(), &[]).unwrap();
        let ports = [free_port(), free_port(), free_port()];
        let addr = |id: u64| -> SocketAddr { format!("127.0.0.1:{}", ports[(id - 1) as usize]).parse().unwrap() };
        let mut procs: Vec<Option<std::process::Child>> =
            (1..=3).map(|id| Some(spawn(dir_path.as_path(), id, &ports))).collect();
        let mut apis = Vec::new();
        for id in 1..=3 {
            apis.push((id, client(addr(id), &admin).await));
        }
        let lead = leader(&mut apis).await;
        let mut api = client(addr(lead), &admin).await;

        if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
            let pid = procs[(lead - 1) as usize].as_ref().unwrap().id();
            eprintln!("leader is node {lead}, pid {pid}");
            std::fs::write(dir_path.join("leader.pid"), pid.to_string()).unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // The operator API's own round trip (mutual TLS, HTTP/2, protobuf) with no commit: a
        // floor under every write's latency.
        let t = Instant::now();
        for _ in 0..WRITES_SINGLE {
            api.get_status(pb::GetStatusRequest {}).await.expect("status");
        }
        let reads = WRITES_SINGLE as f64 / t.elapsed().as_secs_f64();
        println!("API round trips/s without a commit (GetStatus), 1 client: {reads:.0}");

        let t = Instant::now();
        for n in 0..WRITES_SINGLE {
            assert!(write(&mut api, n).await, "write {n} failed");
        }
        let single = WRITES_SINGLE as f64 / t.elapsed().as_secs_f64();
        println!("durable commits/s, 1 client: {single:.0} ({WRITES_SINGLE} writes)");

        // Each client has its own connection, made before the clock starts.
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(client(addr(lead), &admin).await);
        }
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (c, mut api) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                for n in 0..WRITES_PER_CLIENT {
                    assert!(write(&mut api, c * 1_000 + n).await, "client {c} write {n} failed");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let many = (CLIENTS * WRITES_PER_CLIENT) as f64 / t.elapsed().as_secs_f64();
        println!("durable commits/s, {CLIENTS} clients: {many:.0} ({} writes)", CLIENTS * WRITES_PER_CLIENT);

        for round in 1..=3 {
            let lead = leader(&mut apis).await;
            let survivor = (1..=3u64).find(|id| *id != lead && procs[(*id - 1) as usize].is_some()).unwrap();
            let mut api = client(addr(survivor), &admin).await;
            let mut victim = procs[(lead - 1) as usize].take().unwrap();
            let killed = Instant::now();
            victim.kill().unwrap();
            let _ = victim.wait();
            let mut n = 0;
            while !write(&mut api, 100_000 + n).await {
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!(
                "failover {round}: leader {lead} killed, first write accepted after {} ms",
                killed.elapsed().as_millis()
            );
            // Bring it back as a follower for the next round.
            procs[(lead - 1) as usize] = Some(spawn(dir_path.as_path(), lead, &ports));
            apis.retain(|(id, _)| *id != lead);
            apis.push((lead, client(addr(lead), &admin).await));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for mut p in procs.into_iter().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    });
}
