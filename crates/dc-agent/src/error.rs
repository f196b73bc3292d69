//! Errors that stop a cell or a node from starting or running. Everything that happens after
//! start-up (a lost connection, a bad message, a task that will not launch) is logged, counted
//! and retried instead.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS material: {0}")]
    Tls(#[from] switchyard_tls::PkiError),
    #[error("{0}")]
    WrongIdentity(String),
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} cannot be read back ({reason}); move it away only if you accept losing what it records")]
    CorruptState { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("cannot set up mutual TLS with {cert}: {source}")]
    TlsSetup {
        cert: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error("quota file {0}")]
    Quotas(String),
    #[error("resource limits: {0}")]
    Limits(String),
}
