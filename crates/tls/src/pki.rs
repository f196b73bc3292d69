use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::identity::{Identity, identity_from_der};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a PEM certificate with a Switchyard identity: {reason}")]
    BadBundle { path: PathBuf, reason: String },
}

/// Paths of one party's PEM files: the federation CA, its certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One party's loaded PEM material.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

/// Writes atomically (temp file, then rename) and leaves an identical file untouched, so a
/// daemon reading its certificates while another one is being issued never sees a partial file.
fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(err)?;
    restrict_permissions_if_key(&tmp, path);
    std::fs::rename(&tmp, path).map_err(err)
}

fn restrict_permissions_if_key(tmp: &Path, path: &Path) {
    if path.to_string_lossy().ends_with("-key.pem") {
        restrict_permissions(tmp);
    }
}

impl TlsFiles {
    /// The conventional file names for `name` inside a certificate directory.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) }
    }

    pub fn load(&self) -> Result<Bundle, PkiError> {
        Ok(Bundle { ca_pem: read(&self.ca)?, cert_pem: read(&self.cert)?, key_pem: read(&self.key)? })
    }
}

impl Bundle {
    /// The identity written in this bundle's own certificate.
    pub fn identity(&self, path: &Path) -> Result<Identity, PkiError> {
        let bad = |reason: String| PkiError::BadBundle { path: path.to_path_buf(), reason };
        let der = pem_to_der(&self.cert_pem).map_err(bad)?;
        identity_from_der(&der).map_err(|e| PkiError::BadBundle { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Server side: present our certificate and require a client certificate signed by the CA.
    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side: trust only the federation CA and present our certificate. `server_name`
    /// must be one of the server certificate's names (an IP literal works too).
    pub fn client_tls(&self, server_name: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name.to_string())
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    if block.label != "CERTIFICATE" {
        return Err(format!("expected a CERTIFICATE block, found {}", block.label));
    }
    Ok(block.contents)
}

fn current_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// A certificate authority whose key is kept on disk next to its certificate. Meant for local
/// federations and tests; production deployments bring certificates from their own PKI.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertAuthority {
    /// Creates a new CA valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Switchyard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let year = current_year();
        params.not_before = date_time_ymd(year - 1, 1, 1);
        params.not_after = date_time_ymd(year + 10, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key = KeyPair::from_pem(&read(&dir.join("ca-key.pem"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { cert_pem, issuer })
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;
        write(&dir.join("ca.pem"), &self.cert_pem)?;
        write(&dir.join("ca-key.pem"), &self.issuer.key().serialize_pem())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `identity`, usable as both TLS client and server, valid for
    /// two years. `hosts` are the DNS names and IP addresses a server answers on.
    pub fn issue(&self, identity: &Identity, hosts: &[String]) -> Result<Bundle, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_string());
        dn.push(DnType::OrganizationName, "Switchyard");
        params.distinguished_name = dn;
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
        for host in hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let year = current_year();
        params.not_before = date_time_ymd(year - 1, 1, 1);
        params.not_after = date_time_ymd(year + 2, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Bundle { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a certificate and writes it as `<file_stem>.pem` / `<file_stem>-key.pem` (plus
    /// `ca.pem`) into `dir`, returning the paths.
    pub fn issue_to_dir(
        &self,
        dir: &Path,
        file_stem: &str,
        identity: &Identity,
        hosts: &[String],
    ) -> Result<TlsFiles, PkiError> {
        let bundle = self.issue(identity, hosts)?;
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;
        let files = TlsFiles::in_dir(dir, file_stem);
        write(&files.ca, &bundle.ca_pem)?;
        write(&files.cert, &bundle.cert_pem)?;
        write(&files.key, &bundle.key_pem)?;
        Ok(files)
    }
}

fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn issued_certificate_carries_identity_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("test ca").unwrap();
        ca.save(dir.path()).unwrap();
        let id = Identity::new(Role::Operator, "alice").unwrap();
        let files = ca.issue_to_dir(dir.path(), "alice", &id, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let bundle = files.load().unwrap();
        assert_eq!(bundle.identity(&files.cert).unwrap(), id);

        // A reloaded CA issues certificates under the same root.
        let again = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let bob = Identity::new(Role::Viewer, "bob").unwrap();
        let b = again.issue(&bob, &[]).unwrap();
        assert_eq!(b.identity(Path::new("bob.pem")).unwrap(), bob);
    }
}
