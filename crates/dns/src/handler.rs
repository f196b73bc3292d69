//! The hickory request handler: protocol checks (opcode, class, EDNS version, question count),
//! then [`answer`] over a snapshot of the served table. It never touches sockets itself; the
//! hickory server owns them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answer::{Answer, answer};
use crate::config::ZoneConfig;
use crate::metric_names as m;
use crate::store::SharedTable;

/// Largest UDP payload advertised or used, whatever the client offers: 1232 bytes avoids IP
/// fragmentation on common paths (the 2020 DNS flag day value). Larger answers set TC and the
/// client retries over TCP.
pub const UDP_PAYLOAD_MAX: u16 = 1232;
/// EDNS version this server speaks.
const EDNS_VERSION: u8 = 0;

/// Answers queries for one zone from the shared routing table.
#[derive(Clone)]
pub struct DnsHandler {
    table: Arc<SharedTable>,
    zone: Arc<ZoneConfig>,
}

impl DnsHandler {
    pub fn new(table: Arc<SharedTable>, zone: ZoneConfig) -> Self {
        Self { table, zone: Arc::new(zone) }
    }

    async fn handle<R: ResponseHandler>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        let mut response_edns = None;
        if let Some(req_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().clamp(512, UDP_PAYLOAD_MAX));
            edns.set_version(EDNS_VERSION);
            if req_edns.version() > EDNS_VERSION {
                return send(request, Answer::error(ResponseCode::BADVERS), Some(edns), response_handle).await;
            }
            response_edns = Some(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            return send(request, Answer::error(ResponseCode::NotImp), response_edns, response_handle).await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return send(request, Answer::error(ResponseCode::FormErr), response_edns, response_handle).await;
        };
        let query = info.query;
        if query.query_class() != DNSClass::IN {
            return send(request, Answer::error(ResponseCode::Refused), response_edns, response_handle).await;
        }
        let qname = Name::from(query.name().clone());
        let table = self.table.current();
        let result = answer(table.as_deref(), &self.zone, &qname, query.query_type());
        send(request, result, response_edns, response_handle).await
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    answer: Answer,
    mut edns: Option<Edns>,
    mut response_handle: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = answer.authoritative;
    metadata.response_code = answer.rcode;
    if answer.rcode.high() != 0
        && let Some(edns) = edns.as_mut()
    {
        edns.set_rcode_high(answer.rcode.high());
    }
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
