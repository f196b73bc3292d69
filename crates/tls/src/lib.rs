//! Mutual TLS for every Switchyard link: a small certificate authority for local and test
//! setups (rcgen), loading of certificate bundles into tonic server and client configurations,
//! and the mapping from a peer's certificate to an [`Identity`].
//!
//! Identities live in a URI subject alternative name `spiffe://switchyard/<role>/<name>`;
//! nothing else in a certificate (common name, IP SANs) grants a role. This crate never opens
//! sockets and never reads configuration of its own.

mod identity;
mod pki;

pub use identity::{Identity, IdentityError, Role, peer_identity};
pub use pki::{Bundle, CertAuthority, PkiError, TlsFiles};
