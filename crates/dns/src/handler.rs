//! The protocol decisions every response goes through ([`reply`]: opcode, class, EDNS version,
//! question count, then [`answer`] over a snapshot of the served table), and the hickory
//! request handler that applies them to DNS over TCP. It never touches sockets itself; the
//! hickory server owns them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::{Edns, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answer::{Answer, answer};
use crate::config::ZoneConfig;
use crate::metric_names as m;
use crate::store::SharedTable;
use crate::table::Table;

/// Largest UDP payload advertised or used, whatever the client offers: 1232 bytes avoids IP
/// fragmentation on common paths (the 2020 DNS flag day value). Larger answers set TC and the
/// client retries over TCP.
pub const UDP_PAYLOAD_MAX: u16 = 1232;
/// EDNS version this server speaks.
const EDNS_VERSION: u8 = 0;

/// Answers queries for one zone from the shared routing table (DNS over TCP; UDP has its own
/// workers in [`crate::udp`], deciding with the same [`reply`]).
#[derive(Clone)]
pub struct DnsHandler {
    table: Arc<SharedTable>,
    zone: Arc<ZoneConfig>,
    selector: Arc<AtomicU64>,
}

impl DnsHandler {
    pub fn new(table: Arc<SharedTable>, zone: ZoneConfig) -> Self {
        Self { table, zone: Arc::new(zone), selector: Arc::new(AtomicU64::new(0)) }
    }

    async fn handle<R: ResponseHandler>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        let query = request.request_info().ok().map(|info| info.query.original().clone());
        let table = self.table.current();
        let selector = self.selector.fetch_add(1, Ordering::Relaxed);
        let reply =
            reply(&request.metadata, query.as_ref(), request.edns.as_ref(), table.as_deref(), &self.zone, selector);
        send(request, reply, response_handle).await
    }
}

/// A response decided: header, sections and EDNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub metadata: Metadata,
    pub answer: Answer,
    /// Present exactly when the request carried EDNS.
    pub edns: Option<Edns>,
}

/// Decides the response to a request from its header, its question (`None` unless there is
/// exactly one) and its EDNS record: protocol checks (EDNS version, opcode, question count,
/// class), then [`answer`] from `table` with `selector`. Pure.
pub fn reply(
    request: &Metadata,
    query: Option<&Query>,
    request_edns: Option<&Edns>,
    table: Option<&Table>,
    zone: &ZoneConfig,
    selector: u64,
) -> Reply {
    let mut edns = request_edns.map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, UDP_PAYLOAD_MAX));
        edns.set_version(EDNS_VERSION);
        // RFC 3225: the DO bit is copied (nothing here is signed).
        edns.set_dnssec_ok(req.flags().dnssec_ok);
        edns
    });
    let answer = if request_edns.is_some_and(|e| e.version() > EDNS_VERSION) {
        Answer::error(ResponseCode::BADVERS)
    } else if request.op_code != OpCode::Query {
        Answer::error(ResponseCode::NotImp)
    } else {
        match query {
            // Not exactly one question.
            None => Answer::error(ResponseCode::FormErr),
            Some(q) if q.query_class() != DNSClass::IN => Answer::error(ResponseCode::Refused),
            Some(q) => answer(table, zone, q.name(), q.query_type(), selector),
        }
    };
    let mut metadata = Metadata::response_from_request(request);
    metadata.authoritative = answer.authoritative;
    metadata.response_code = answer.rcode;
    if let Some(edns) = edns.as_mut() {
        edns.set_rcode_high(answer.rcode.high());
    }
    Reply { metadata, answer, edns }
}

async fn send<R: ResponseHandler>(request: &Request, reply: Reply, mut response_handle: R) -> ResponseInfo {
    let Reply { metadata, answer, edns } = reply;
    let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
    let response = builder.build(
        metadata,
        answer.answers.iter(),
        answer.authority.iter(),
        std::iter::empty::<&Record>(),
        answer.additional.iter(),
    );
    let info = match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, src = %request.src(), "cannot send DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            return ResponseInfo::from(hickory_proto::op::Header { metadata, counts: Default::default() });
        }
    };
    metrics::counter!(m::QUERIES_TOTAL, "rcode" => m::rcode_label(answer.rcode)).increment(1);
    info
}

// hickory declares `RequestHandler` with `#[async_trait]`; this is the signature that macro
// produces, written out so the crate needs no proc-macro dependency of its own.
impl RequestHandler for DnsHandler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(request, response_handle))
    }
}
