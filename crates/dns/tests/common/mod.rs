//! Test support: a certificate authority in a temporary directory, a fake federator serving the
//! routing stream over mutual TLS, and a minimal DNS client over UDP and TCP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard_proto::routing::v1::routing_server::{Routing, RoutingServer};
use switchyard_proto::routing::v1::{RoutingEntry, RoutingTable, SiteTarget, WatchRequest};
use switchyard_tls::{CertAuthority, Identity, Role, TlsFiles, peer_identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Upper bound of every wait in these tests.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A CA plus certificate files for one DNS server and one federator.
pub struct Pki {
    pub dns: TlsFiles,
    pub federator: TlsFiles,
}

impl Pki {
    pub fn generate(dir: &Path, ca_name: &str) -> anyhow::Result<Self> {
        let ca = CertAuthority::generate(ca_name)?;
        let dns = ca.issue_to_dir(dir, "dns-1", &Identity::new(Role::Dns, "dns-1")?, &[])?;
        let federator =
            ca.issue_to_dir(dir, "fed-1", &Identity::new(Role::Federator, "fed-1")?, &["127.0.0.1".to_string()])?;
        Ok(Self { dns, federator })
    }
}

/// The argument vector `fedctl up` would pass, with DNS on a free loopback port.
pub fn dns_args(pki: &Pki, federator: SocketAddr, state_dir: &Path, metrics: bool) -> Vec<String> {
    let mut argv: Vec<String> = [
        "fed-dns",
        "--zone",
        "fed.local.",
        "--listen",
        "127.0.0.1:0",
        "--federator",
        &format!("https://{federator}"),
        "--tls-ca",
        &path(&pki.dns.ca),
        "--tls-cert",
        &path(&pki.dns.cert),
        "--tls-key",
        &path(&pki.dns.key),
        "--state-dir",
        &path(state_dir),
        "--server-id",
        "dns-1",
        "--ns-name",
        "ns1",
        "--ns-address",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if metrics {
        argv.extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    argv
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

pub fn table(version: u64, epoch: u64, crm_address: &str) -> RoutingTable {
    RoutingTable {
        version,
        epoch,
        zone: "fed.local.".into(),
        entries: vec![RoutingEntry {
            name: "crm-web".into(),
            group: "crm".into(),
            ttl_s: 30,
            targets: vec![
                SiteTarget {
                    site: "site-a".into(),
                    addresses: vec![crm_address.into()],
                    weight: 100,
                    unhealthy: false,
                },
                SiteTarget { site: "site-b".into(), addresses: vec!["127.0.66.1".into()], weight: 0, unhealthy: false },
            ],
            services: vec![],
            txt: vec![],
            cname: String::new(),
        }],
    }
}

#[derive(Clone)]
struct FakeRouting {
    tables: watch::Receiver<RoutingTable>,
    calls: Arc<Mutex<Vec<(String, WatchRequest)>>>,
    observations: Arc<Mutex<Vec<(String, switchyard_proto::routing::v1::ObservationBatch)>>>,
}

#[tonic::async_trait]
impl Routing for FakeRouting {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<RoutingTable, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let peer = peer_identity(&request)?.to_string();
        self.calls.lock().unwrap().push((peer, request.into_inner()));
        Ok(Response::new(Box::pin(WatchStream::new(self.tables.clone()).map(Ok))))
    }

    async fn report_observations(
        &self,
        request: Request<switchyard_proto::routing::v1::ObservationBatch>,
    ) -> Result<Response<switchyard_proto::routing::v1::ObservationAck>, Status> {
        let peer = peer_identity(&request)?.to_string();
        self.observations.lock().unwrap().push((peer, request.into_inner()));
        Ok(Response::new(switchyard_proto::routing::v1::ObservationAck {}))
    }
}

/// A federator that streams whatever table the test publishes, current one first.
pub struct FakeFederator {
    pub addr: SocketAddr,
    tables: watch::Sender<RoutingTable>,
    calls: Arc<Mutex<Vec<(String, WatchRequest)>>>,
    observations: Arc<Mutex<Vec<(String, switchyard_proto::routing::v1::ObservationBatch)>>>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl FakeFederator {
    pub async fn start(tls: &TlsFiles, initial: RoutingTable) -> anyhow::Result<Self> {
        let bundle = tls.load()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tables, rx) = watch::channel(initial);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let observations = Arc::new(Mutex::new(Vec::new()));
        let service = FakeRouting { tables: rx, calls: calls.clone(), observations: observations.clone() };
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .tls_config(bundle.server_tls())?
            .add_service(RoutingServer::new(service));
        let task = tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await
        });
        Ok(Self { addr, tables, calls, observations, shutdown, task })
    }

    pub fn publish(&self, table: RoutingTable) {
        self.tables.send_replace(table);
    }

    /// `(peer identity, request)` of every `Watch` call received.
    /// Observation batches received, with the reporter's certificate identity.
    pub fn observations(&self) -> Vec<(String, switchyard_proto::routing::v1::ObservationBatch)> {
        self.observations.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<(String, WatchRequest)> {
        self.calls.lock().unwrap().clone()
    }

    /// Ends every open stream and stops listening.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.tables);
        let _ = self.shutdown.send(());
        tokio::time::timeout(WAIT_MAX, self.task).await.context("fake federator did not stop")???;
        Ok(())
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(1);

fn encode_query(name: &str, qtype: RecordType, edns: bool) -> anyhow::Result<(u16, Vec<u8>)> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(Name::from_ascii(name)?, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    Ok((id, message.to_vec()?))
}

/// One query over UDP (with EDNS).
pub async fn query_udp(server: SocketAddr, name: &str, qtype: RecordType) -> anyhow::Result<Message> {
    let (id, bytes) = encode_query(name, qtype, true)?;
    exchange_udp(server, id, &bytes).await
}

/// Sends an arbitrary message over UDP and returns the reply.
pub async fn send_udp(server: SocketAddr, mut message: Message) -> anyhow::Result<Message> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    message.metadata.id = id;
    exchange_udp(server, id, &message.to_vec()?).await
}

async fn exchange_udp(server: SocketAddr, id: u16, bytes: &[u8]) -> anyhow::Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(bytes, server).await?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf)).await.context("UDP query timed out")??;
    let reply = Message::from_vec(&buf[..n])?;
    ensure!(reply.metadata.id == id, "reply id {} does not match query id {id}", reply.metadata.id);
    Ok(reply)
}

/// One query over TCP (no EDNS), length-prefixed as RFC 1035 §4.2.2 says.
pub async fn query_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> anyhow::Result<Message> {
    let (id, bytes) = encode_query(name, qtype, false)?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        stream.write_all(&u16::try_from(bytes.len())?.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(QUERY_TIMEOUT, exchange).await.context("TCP query timed out")??;
    let reply = Message::from_vec(&buf)?;
    ensure!(reply.metadata.id == id, "reply id {} does not match query id {id}", reply.metadata.id);
    Ok(reply)
}

/// Addresses in the answer section, as text.
pub fn addresses(reply: &Message) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Serial of the first SOA in the answer or authority section.
pub fn soa_serial(reply: &Message) -> Option<u32> {
    reply.answers.iter().chain(&reply.authorities).find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// Polls `query` until `done` holds for the reply, for at most [`WAIT_MAX`].
pub async fn eventually<F, Fut>(what: &str, mut query: F, done: impl Fn(&Message) -> bool) -> anyhow::Result<Message>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Message>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let last = match query().await {
            Ok(reply) if done(&reply) => return Ok(reply),
            Ok(reply) => {
                format!(
                    "{:?} answers {:?} serial {:?}",
                    reply.metadata.response_code,
                    addresses(&reply),
                    soa_serial(&reply)
                )
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}; last reply: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_noerror_aa(reply: &Message) -> bool {
    reply.metadata.response_code == ResponseCode::NoError && reply.metadata.authoritative
}

pub fn state_dir(root: &Path) -> PathBuf {
    root.join("state")
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One site's share of a routed name.
pub fn site(site: &str, addresses: &[&str], weight: u32) -> SiteTarget {
    SiteTarget {
        site: site.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        weight,
        unhealthy: false,
    }
}

/// A routed name with `targets` and nothing else (TTL 30 s).
pub fn routed(name: &str, targets: Vec<SiteTarget>) -> RoutingEntry {
    RoutingEntry {
        name: name.into(),
        group: name.into(),
        ttl_s: 30,
        targets,
        services: vec![],
        txt: vec![],
        cname: String::new(),
    }
}
