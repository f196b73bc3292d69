use std::fmt;
use std::str::FromStr;

/// Scheme and trust domain every Switchyard identity URI starts with.
pub const URI_PREFIX: &str = "spiffe://switchyard/";

/// What a certificate holder may do. Checked by each service before it acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read-only access to status, sites, groups and operations.
    Viewer,
    /// Planned switchovers, plus everything a viewer may do.
    Operator,
    /// Failover, brake release and freezes, plus everything an operator may do.
    DrAdmin,
    /// Reads the audit history.
    Auditor,
    /// Everything.
    Admin,
    /// A site's cell master (`dc-agent cell`); the name is the site.
    Cell,
    /// A host agent (`dc-agent node`); the name is `<site>/<node>` or the node id.
    Node,
    /// A DNS server (`fed-dns`).
    Dns,
    /// A federator replica.
    Federator,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Viewer,
        Role::Operator,
        Role::DrAdmin,
        Role::Auditor,
        Role::Admin,
        Role::Cell,
        Role::Node,
        Role::Dns,
        Role::Federator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::DrAdmin => "dr-admin",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Cell => "cell",
            Role::Node => "node",
            Role::Dns => "dns",
            Role::Federator => "federator",
        }
    }

    /// Whether a holder of this role may read federation status.
    pub fn can_view(self) -> bool {
        matches!(self, Role::Viewer | Role::Operator | Role::DrAdmin | Role::Auditor | Role::Admin)
    }

    /// Whether a holder of this role may start planned switchovers.
    pub fn can_switchover(self) -> bool {
        matches!(self, Role::Operator | Role::DrAdmin | Role::Admin)
    }

    /// Whether a holder of this role may read the audit history.
    /// Set and clear freezes (stop switchovers, spec changes and autoscaling in a scope).
    pub fn can_freeze(self) -> bool {
        matches!(self, Role::DrAdmin | Role::Admin)
    }

    pub fn can_read_audit(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin | Role::DrAdmin | Role::Operator)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// Who is on the other end of a connection, as proven by its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        validate_name(&name)?;
        Ok(Self { role, name })
    }

    /// The URI placed in the certificate's subject alternative names.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(|| IdentityError::NotSwitchyard(uri.to_string()))?;
        let (role, name) = rest.split_once('/').ok_or_else(|| IdentityError::NotSwitchyard(uri.to_string()))?;
        Identity::new(role.parse()?, name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '@'));
    if ok { Ok(()) } else { Err(IdentityError::BadName(name.to_string())) }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "unknown role {0:?}; expected one of viewer, operator, dr-admin, auditor, admin, cell, node, dns, federator"
    )]
    UnknownRole(String),
    #[error("identity name {0:?} is invalid: use 1-128 characters from [A-Za-z0-9-_./@]")]
    BadName(String),
    #[error("{0:?} is not a Switchyard identity URI (expected {URI_PREFIX}<role>/<name>)")]
    NotSwitchyard(String),
    #[error("the connection carries no client certificate; every Switchyard link requires mutual TLS")]
    NoCertificate,
    #[error("the client certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("the client certificate has no {URI_PREFIX}<role>/<name> subject alternative name")]
    NoIdentity,
}

/// Extracts the Switchyard identity from a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
        .ok_or(IdentityError::NoIdentity)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && uri.starts_with(URI_PREFIX)
        {
            return Identity::parse_uri(uri);
        }
    }
    Err(IdentityError::NoIdentity)
}

/// The identity of the peer of a gRPC request, from the client certificate the TLS layer
/// already verified against the federation CA.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    let certs =
        request.peer_certs().ok_or_else(|| tonic::Status::unauthenticated(IdentityError::NoCertificate.to_string()))?;
    let leaf = certs.first().ok_or_else(|| tonic::Status::unauthenticated(IdentityError::NoCertificate.to_string()))?;
    identity_from_der(leaf.as_ref()).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = Identity::new(Role::Cell, "site-1").unwrap();
        assert_eq!(id.uri(), "spiffe://switchyard/cell/site-1");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
        assert_eq!(id.to_string(), "cell:site-1");
    }

    #[test]
    fn rejects_foreign_and_malformed_uris() {
        assert!(matches!(Identity::parse_uri("spiffe://other/cell/x"), Err(IdentityError::NotSwitchyard(_))));
        assert!(matches!(Identity::parse_uri("spiffe://switchyard/root/x"), Err(IdentityError::UnknownRole(_))));
        assert!(matches!(Identity::parse_uri("spiffe://switchyard/admin/bad name"), Err(IdentityError::BadName(_))));
        assert!(matches!(Identity::parse_uri("spiffe://switchyard/admin"), Err(IdentityError::NotSwitchyard(_))));
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(Role::Operator.can_switchover());
        assert!(!Role::Viewer.can_switchover());
        assert!(!Role::Cell.can_view());
        assert!(!Role::Auditor.can_switchover());
        assert!(Role::Auditor.can_read_audit());
    }
}
