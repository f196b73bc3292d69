//! DNS over UDP: one thread per socket, all sockets bound to the same port with `SO_REUSEPORT`
//! so the kernel spreads queries across them. Each thread receives and sends in batches
//! (`recvmmsg`/`sendmmsg`), answers from [`Prepared`] when it can and from the general path
//! otherwise, and counts responses locally, publishing the counts once per batch.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ZoneConfig;
use crate::metric_names as m;
use crate::store::SharedTable;
use crate::table::Table;
use crate::wire::{Prepared, general_response};

/// Datagrams handled per system call.
const BATCH: usize = 32;
/// Receive buffer per datagram; longer datagrams arrive cut short and get FORMERR.
const RECV_BUF: usize = 4096;
/// How often a blocked worker wakes to see whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Kernel socket buffers, so that bursts are queued rather than dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets to `addr` with `SO_REUSEPORT`. With port 0 the first socket picks
/// the port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
        if at.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // Best effort: the kernel caps these at its own limits.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&at.into())?;
        let socket: UdpSocket = socket.into();
        at = socket.local_addr()?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// The prepared answers of the served table, rebuilt once per table by whichever worker first
/// sees it.
struct PreparedCache {
    shared: Arc<SharedTable>,
    zone: Arc<ZoneConfig>,
    built: Mutex<Option<(Arc<Table>, Arc<Prepared>)>>,
}

impl PreparedCache {
    /// The served table and its prepared answers, reusing `current` when the table has not
    /// changed.
    fn refresh(&self, current: &mut Option<(Arc<Table>, Arc<Prepared>)>) {
        let table = self.shared.current();
        let same = |held: &Option<(Arc<Table>, Arc<Prepared>)>| match (held, &table) {
            (Some((t, _)), Some(now)) => Arc::ptr_eq(t, now),
            (None, None) => true,
            _ => false,
        };
        if same(current) {
            return;
        }
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if !same(&built) {
            *built = table.map(|t| {
                let prepared = Arc::new(Prepared::build(&t, &self.zone));
                tracing::debug!(version = t.version(), fast_names = prepared.len(), "fast-path answers prepared");
                (t, prepared)
            });
        }
        current.clone_from(&built);
    }
}

/// The running UDP workers.
pub struct UdpWorkers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpWorkers {
    /// Starts one worker thread per socket.
    pub fn start(sockets: Vec<UdpSocket>, shared: Arc<SharedTable>, zone: Arc<ZoneConfig>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let cache = Arc::new(PreparedCache { shared, zone, built: Mutex::new(None) });
        let mut threads = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let (stop, cache) = (stop.clone(), cache.clone());
            threads.push(std::thread::Builder::new().name(format!("dns-udp-{i}")).spawn(move || {
                worker(&socket, &cache, &stop);
            })?);
        }
        Ok(Self { stop, threads })
    }

    /// Whether any worker has stopped (they stop only when told to).
    pub fn any_stopped(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops the workers and waits for them (at most one poll interval).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Per-batch response counts, published as metrics after each batch.
#[derive(Default)]
struct Counts {
    by_rcode: [(u64, Option<ResponseCode>); 8],
}

impl Counts {
    fn add(&mut self, rcode: ResponseCode) {
        let slot = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::FormErr => 1,
            ResponseCode::ServFail => 2,
            ResponseCode::NXDomain => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::Refused => 5,
            ResponseCode::BADVERS => 6,
            _ => 7,
        };
        self.by_rcode[slot].0 += 1;
        self.by_rcode[slot].1 = Some(rcode);
    }

    fn publish(&mut self) {
        for (n, rcode) in &mut self.by_rcode {
            if *n > 0
                && let Some(rcode) = rcode
            {
                metrics::counter!(m::QUERIES_TOTAL, "rcode" => m::rcode_label(*rcode)).increment(*n);
                *n = 0;
            }
        }
    }
}

fn worker(socket: &UdpSocket, cache: &PreparedCache, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; RECV_BUF]; BATCH];
    let mut outs: Vec<Vec<u8>> =
        (0..BATCH).map(|_| Vec::with_capacity(usize::from(crate::handler::UDP_PAYLOAD_MAX))).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut lens = [0usize; BATCH];
    let mut from: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut reply_to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut reply_idx: Vec<usize> = Vec::with_capacity(BATCH);
    let mut current = None;
    let mut selector: u64 = 0;
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let received = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(&mut b[..])]).collect();
            match recvmmsg(fd, &mut recv_headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(results) => {
                    let mut n = 0;
                    for r in results {
                        lens[n] = r.bytes;
                        from[n] = r.address;
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN | Errno::EINTR) => 0,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS UDP receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            }
        };
        if received == 0 {
            continue;
        }
        cache.refresh(&mut current);
        let (table, prepared) = match &current {
            Some((t, p)) => (Some(&**t), Some(&**p)),
            None => (None, None),
        };
        reply_to.clear();
        reply_idx.clear();
        for i in 0..received {
            let query = &bufs[i][..lens[i].min(RECV_BUF)];
            selector = selector.wrapping_add(1);
            let out = &mut outs[i];
            if prepared.is_some_and(|p| p.respond(query, selector, out)) {
                counts.add(ResponseCode::NoError);
            } else if let Some((bytes, rcode)) = general_response(query, table, &cache.zone, selector) {
                *out = bytes;
                counts.add(rcode);
            } else {
                continue;
            }
            reply_to.push(from[i]);
            reply_idx.push(i);
        }
        if !reply_idx.is_empty() {
            let slices: Vec<[IoSlice<'_>; 1]> = reply_idx.iter().map(|i| [IoSlice::new(&outs[*i])]).collect();
            let cmsgs: [ControlMessage<'_>; 0] = [];
            if let Err(e) = sendmmsg(fd, &mut send_headers, slices.iter(), &reply_to[..], cmsgs, MsgFlags::empty()) {
                tracing::debug!(error = %e, "DNS UDP send failed");
            }
        }
        counts.publish();
    }
}
