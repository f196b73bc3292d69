//! Finding the federator and talking to it: `fedctl.toml` discovery and the mTLS channel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

use crate::CliError;

/// Default location of the client configuration, relative to the working directory.
pub const DEFAULT_CONFIG: &str = ".switchyard/fedctl.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `https://host:port` of a federator.
    pub endpoint: String,
    /// Further replicas, tried in order when `endpoint` cannot be reached (any replica serves;
    /// writes are forwarded to the leader).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read client configuration {}: {e}\n  (start a local federation with `fedctl up`, or pass --config / set FEDCTL_CONFIG)",
                path.display()
            ))
        })?;
        toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{} is not a valid fedctl configuration: {e}", path.display())))
    }
}

/// `--config`, then `FEDCTL_CONFIG`, then `./.switchyard/fedctl.toml`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("FEDCTL_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG),
    }
}

/// Bound on connecting to one replica, TCP and TLS handshakes included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);

/// Connects to the first replica that answers: `endpoint`, then each of `endpoints`.
pub async fn connect(cfg: &ClientConfig) -> Result<OperatorClient<Channel>, CliError> {
    let mut last = None;
    for endpoint in std::iter::once(&cfg.endpoint).chain(cfg.endpoints.iter().filter(|e| **e != cfg.endpoint)) {
        match connect_one(cfg, endpoint).await {
            Ok(c) => return Ok(c),
            Err(CliError::Unavailable(e)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(CliError::Unavailable(last.unwrap_or_else(|| "no federator endpoint configured".into())))
}

/// Every configured replica endpoint, `endpoint` first.
pub fn all_endpoints(cfg: &ClientConfig) -> Vec<String> {
    let mut out = vec![cfg.endpoint.clone()];
    out.extend(cfg.endpoints.iter().filter(|e| **e != cfg.endpoint).cloned());
    out
}

pub async fn connect_one(cfg: &ClientConfig, endpoint: &str) -> Result<OperatorClient<Channel>, CliError> {
    let bundle = cfg.tls.load().map_err(|e| CliError::Usage(format!("client certificate: {e}")))?;
    let uri: tonic::transport::Uri =
        endpoint.parse().map_err(|e| CliError::Usage(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::Usage(format!("endpoint {endpoint:?} must use https://; plaintext is not supported")));
    }
    let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
    let ep = Endpoint::from(uri)
        .tls_config(bundle.client_tls(&host))
        .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15));
    let connecting = ep.connect();
    // A paused or hung replica completes the TCP handshake (the kernel does) but never the TLS
    // one: bound the whole connect so the next replica is tried.
    let channel = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            CliError::Unavailable(format!(
                "the federator at {endpoint} accepted the connection but did not complete the TLS handshake within {} s (hung or paused)",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            CliError::Unavailable(format!("cannot reach the federator at {endpoint}: {}", source_chain(&e)))
        })?;
    Ok(OperatorClient::new(channel).max_decoding_message_size(switchyard_proto::MAX_MESSAGE_BYTES))
}

/// The full cause chain of an error, which for TLS failures holds the useful part.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
