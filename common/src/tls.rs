//! rustls configurations for the fleet link: TLS 1.3 only, ALPN `fleetwatch/1`, mutual TLS
//! against the fleet CA. The server's client verifier re-reads the CA and revocation list on
//! demand (no restart for `pki revoke`) and reports why it refused a client.

use crate::pki::{self, PkiError};
use crate::protocol::ALPN;
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS configuration failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading certificates or keys.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The verifier could not be built.
    #[error("client verifier from {0}: {1}")]
    Verifier(PathBuf, String),
}

/// Why a client certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Not signed by the fleet CA.
    UnknownCa,
    /// Past its expiry.
    Expired,
    /// On the revocation list.
    Revoked,
    /// Not valid yet.
    NotYetValid,
    /// Anything else.
    Other,
}

impl RefusalReason {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::Expired => "expired",
            RefusalReason::Revoked => "revoked",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::Other => "invalid",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    RefusalReason::UnknownCa
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    RefusalReason::Expired
                }
                CertificateError::Revoked => RefusalReason::Revoked,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    RefusalReason::NotYetValid
                }
                _ => RefusalReason::Other,
            },
            _ => RefusalReason::Other,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in pki::load_certs(ca)? {
        store
            .add(c)
            .map_err(|e| TlsError::Verifier(ca.to_path_buf(), e.to_string()))?;
    }
    Ok(store)
}

/// The agent's configuration: trust only the fleet CA, present the agent's certificate.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(pki::load_certs(cert)?, pki::load_key(key)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

type Refusals = Arc<dyn Fn(RefusalReason) + Send + Sync>;

/// Verifies client certificates against the current CA and CRL; swapped on reload.
struct ReloadingClientVerifier {
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
    refusals: Refusals,
}

impl std::fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingClientVerifier")
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional in TLS 1.3; sending none avoids borrowing from a swappable value.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .inner
            .load()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            (self.refusals)(RefusalReason::of(e));
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Reloads the server's CA and revocation list.
#[derive(Clone)]
pub struct ClientVerifierHandle {
    verifier: Arc<ReloadingClientVerifier>,
    ca: PathBuf,
    crl: Option<PathBuf>,
    revoked: Arc<ArcSwap<Vec<Vec<u8>>>>,
}

/// Serial numbers on the revocation list in force.
type RevokedSerials = Vec<Vec<u8>>;

fn build_verifier(
    ca: &Path,
    crl: Option<&Path>,
) -> Result<(Arc<dyn ClientCertVerifier>, RevokedSerials), TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
    let mut revoked = Vec::new();
    if let Some(crl) = crl {
        // Our CRL covers every certificate the CA issues, so an unknown revocation status
        // (rustls' default: an error) can only mean a foreign certificate.
        builder = builder.with_crls(pki::load_crls(crl)?);
        revoked = pki::revoked_serials(crl)?;
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Verifier(crl.unwrap_or(ca).to_path_buf(), e.to_string()))?;
    Ok((verifier, revoked))
}

impl ClientVerifierHandle {
    /// Re-reads the CA and CRL files; on error the previous ones stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (verifier, revoked) = build_verifier(&self.ca, self.crl.as_deref())?;
        self.verifier.inner.store(Arc::new(verifier));
        self.revoked.store(Arc::new(revoked));
        Ok(())
    }

    /// Whether `cert` is on the revocation list in force.
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        match pki::cert_serial(cert) {
            Ok(serial) => self.revoked.load().contains(&serial),
            Err(_) => false,
        }
    }
}

/// The aggregator's configuration: mandatory client certificates from the fleet CA, checked
/// against the CRL; `refusals` hears why a client was refused.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crl: Option<&Path>,
    refusals: Refusals,
) -> Result<(rustls::ServerConfig, ClientVerifierHandle), TlsError> {
    let (inner, revoked) = build_verifier(ca, crl)?;
    let verifier = Arc::new(ReloadingClientVerifier {
        inner: ArcSwap::from_pointee(inner),
        refusals,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(pki::load_certs(cert)?, pki::load_key(key)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let handle = ClientVerifierHandle {
        verifier,
        ca: ca.to_path_buf(),
        crl: crl.map(Path::to_path_buf),
        revoked: Arc::new(ArcSwap::from_pointee(revoked)),
    };
    Ok((cfg, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Validity;
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    /// Runs a TLS handshake in memory; Ok with the server's view of the client certificate.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<Vec<u8>, String> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets().map_err(|e| e.to_string())?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets().map_err(|e| e.to_string())?;
            }
            if !s.is_handshaking() && !c.is_handshaking() {
                return Ok(s.peer_certificates().ok_or("no peer certificate")?[0].to_vec());
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn mutual_tls_refusals_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki::init(d, "ca").unwrap();
        let server = pki::issue_server(d, "localhost", Validity::days(1)).unwrap();
        let agent = pki::issue_agent(d, "web-1", Validity::days(1)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let (scfg, handle) = server_config(
            &d.join("ca.pem"),
            &server.cert,
            &server.key,
            Some(&d.join("crl.pem")),
            Arc::new(move |r| s2.lock().unwrap().push(r)),
        )
        .unwrap();
        let ccfg = || client_config(&d.join("ca.pem"), &agent.cert, &agent.key).unwrap();
        let der = handshake(ccfg(), scfg.clone()).unwrap();
        assert_eq!(pki::identity_from_cert_der(&der).unwrap(), "web-1");

        let other = tempfile::tempdir().unwrap();
        pki::init(other.path(), "other").unwrap();
        let foreign = pki::issue_agent(other.path(), "web-1", Validity::days(1)).unwrap();
        assert!(handshake(
            client_config(&d.join("ca.pem"), &foreign.cert, &foreign.key).unwrap(),
            scfg.clone()
        )
        .is_err());

        let day = Duration::from_secs(86_400);
        let old = pki::issue_agent(
            d,
            "old",
            Validity {
                not_before: SystemTime::now() - 3 * day,
                not_after: SystemTime::now() - day,
            },
        )
        .unwrap();
        assert!(handshake(
            client_config(&d.join("ca.pem"), &old.cert, &old.key).unwrap(),
            scfg.clone()
        )
        .is_err());

        pki::revoke(d, "web-1").unwrap();
        handle.reload().unwrap();
        assert!(handshake(ccfg(), scfg.clone()).is_err());
        assert!(handle.is_revoked(&CertificateDer::from(der)));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                RefusalReason::UnknownCa,
                RefusalReason::Expired,
                RefusalReason::Revoked
            ]
        );
    }
}
