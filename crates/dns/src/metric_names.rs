//! Names of every metric this crate emits, in one place, and their descriptions.

use hickory_proto::op::ResponseCode;

/// Counter, label `rcode`: DNS responses sent.
pub const QUERIES_TOTAL: &str = "dns_queries_total";
/// Gauge: version (SOA serial source) of the table being served; 0 before the first one.
pub const TABLE_VERSION: &str = "dns_table_version";
/// Gauge: epoch (fencing token) of the table being served.
pub const TABLE_EPOCH: &str = "dns_table_epoch";
/// Counter: tables accepted and swapped in.
pub const TABLE_APPLIED_TOTAL: &str = "dns_table_applied_total";
/// Counter, label `reason`: tables refused by validation or fencing.
pub const TABLE_REJECTED_TOTAL: &str = "dns_table_rejected_total";
/// Counter: accepted tables that could not be written to the state directory.
pub const TABLE_PERSIST_FAILURES_TOTAL: &str = "dns_table_persist_failures_total";
/// Gauge: 1 while a routing stream from the federator is open.
pub const FEDERATOR_CONNECTED: &str = "dns_federator_connected";
/// Counter: failed connection attempts or broken routing streams.
pub const FEDERATOR_ERRORS_TOTAL: &str = "dns_federator_errors_total";

/// Registers descriptions with the installed recorder (a no-op without one).
pub fn describe() {
    metrics::describe_counter!(QUERIES_TOTAL, "DNS responses sent, by response code");
    metrics::describe_gauge!(TABLE_VERSION, "Version of the routing table being served (the SOA serial)");
    metrics::describe_gauge!(TABLE_EPOCH, "Epoch (fencing token) of the routing table being served");
    metrics::describe_counter!(TABLE_APPLIED_TOTAL, "Routing tables accepted and applied");
    metrics::describe_counter!(TABLE_REJECTED_TOTAL, "Routing tables refused, by reason");
    metrics::describe_counter!(TABLE_PERSIST_FAILURES_TOTAL, "Applied routing tables that could not be saved");
    metrics::describe_gauge!(FEDERATOR_CONNECTED, "1 while the routing stream from the federator is open");
    metrics::describe_counter!(FEDERATOR_ERRORS_TOTAL, "Failed or broken routing streams");
}

/// Metric label for a response code.
pub fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::ServFail => "servfail",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        ResponseCode::BADVERS => "badvers",
        _ => "other",
    }
}
