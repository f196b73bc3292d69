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

pub async fn connect(cfg: &ClientConfig) -> Result<OperatorClient<Channel>, CliError> {
    let bundle = cfg.tls.load().map_err(|e| CliError::Usage(format!("client certificate: {e}")))?;
    let uri: tonic::transport::Uri =
        cfg.endpoint.parse().map_err(|e| CliError::Usage(format!("endpoint {:?} is not a URL: {e}", cfg.endpoint)))?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::Usage(format!(
            "endpoint {:?} must use https://; plaintext is not supported",
            cfg.endpoint
        )));
    }
    let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
    let channel = Endpoint::from(uri)
        .tls_config(bundle.client_tls(&host))
        .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .map_err(|e| {
            CliError::Unavailable(format!("cannot reach the federator at {}: {}", cfg.endpoint, source_chain(&e)))
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
