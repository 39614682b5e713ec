//! The fleet CA on disk: create it, issue agent and server certificates, revoke them (CRL), and
//! read identities and PEM files.
//!
//! Layout of a PKI directory: `ca.pem`, `ca.key` (0600), `crl.pem`, `index.json`,
//! `agents/NAME.{pem,key}`, `servers/NAME.{pem,key}`. Keys are ECDSA P-256 and are created with
//! mode 0600 (never written first and restricted later). Issuing a name again rotates its
//! certificate; the old serial stays in the index (superseded, not revoked).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A PKI failure, naming the file or name concerned.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// `init` found an existing CA.
    #[error(
        "a CA already exists at {0}; remove it first if you really mean to replace the fleet's CA"
    )]
    Exists(PathBuf),
    /// No CA in the directory.
    #[error("no CA at {0}: run `fleetwatch-aggregator pki init --dir {1}` first")]
    NoCa(PathBuf, String),
    /// An unusable name.
    #[error("invalid name {0:?}: use 1 to 253 characters from A-Z a-z 0-9 . _ -, not starting with . or -")]
    InvalidName(String),
    /// Revoking a name never issued.
    #[error("no certificate was issued to {0:?} in {1}")]
    UnknownName(String, PathBuf),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM file held nothing usable.
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    /// A certificate could not be parsed.
    #[error("certificate: {0}")]
    Parse(String),
    /// The index could not be read or written.
    #[error("{0}: {1}")]
    Index(PathBuf, String),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago for `days` days.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

impl Default for Validity {
    fn default() -> Self {
        Self::days(397)
    }
}

/// Where an issued certificate and key were written.
#[derive(Debug, Clone)]
pub struct IssuedPaths {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, 0600).
    pub key: PathBuf,
    /// Serial number, hex.
    pub serial: String,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// The name.
    pub name: String,
    /// Serials newly revoked.
    pub serials: Vec<String>,
}

/// One issued certificate in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    /// The name.
    pub name: String,
    /// `agent` or `server`.
    pub kind: String,
    /// Serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: u64,
    /// Revoked.
    pub revoked: bool,
    /// When, Unix seconds.
    pub revoked_at: Option<u64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |e| PkiError::Io(path.to_path_buf(), e)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validate_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName(name.to_string()))
    }
}

fn read_index(dir: &Path) -> Result<Vec<IndexEntry>, PkiError> {
    let path = dir.join("index.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| PkiError::Index(path, e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(PkiError::Io(path, e)),
    }
}

fn write_index(dir: &Path, index: &[IndexEntry]) -> Result<(), PkiError> {
    let path = dir.join("index.json");
    let bytes = serde_json::to_vec_pretty(index)
        .map_err(|e| PkiError::Index(path.clone(), e.to_string()))?;
    write_file(&path, &bytes, 0o644)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.pem");
    if !key_path.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf(), dir.display().to_string()));
    }
    let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key = KeyPair::from_pem(&key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep 16 significant bytes (no leading zero)
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    // /dev/urandom is always there on Linux; as a fallback mix the clock.
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    b.copy_from_slice(&n.to_le_bytes());
    b
}

fn write_crl(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    index: &[IndexEntry],
    number: u64,
) -> Result<(), PkiError> {
    let now = SystemTime::now();
    let mut revoked = Vec::new();
    for e in index.iter().filter(|e| e.revoked) {
        let bytes: Vec<u8> = (0..e.serial.len() / 2)
            .filter_map(|i| u8::from_str_radix(&e.serial[2 * i..2 * i + 2], 16).ok())
            .collect();
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(e.revoked_at.unwrap_or(unix(now))))
                .unwrap_or(now)
                .into(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: (now - Duration::from_secs(60)).into(),
        next_update: (now + Duration::from_secs(10 * 365 * 86_400)).into(),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer)?;
    write_file(&dir.join("crl.pem"), crl.pem()?.as_bytes(), 0o644)
}

fn crl_number(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("crl.number"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates a fleet CA in `dir`.
pub fn init(dir: &Path, ca_name: &str) -> Result<(), PkiError> {
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(PkiError::Exists(key_path));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
    params.serial_number = Some(random_serial().0);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
    write_index(dir, &[])?;
    let issuer = load_issuer(dir)?;
    write_crl(dir, &issuer, &[], 1)?;
    write_file(&dir.join("crl.number"), b"1\n", 0o644)
}

fn issue(dir: &Path, name: &str, kind: &str, validity: Validity) -> Result<IssuedPaths, PkiError> {
    validate_name(name)?;
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if kind == "agent" {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.use_authority_key_identifier_extension = true;
    let (serial, serial_hex) = random_serial();
    params.serial_number = Some(serial);
    let cert = params.signed_by(&key, &issuer)?;
    let sub = dir.join(if kind == "agent" { "agents" } else { "servers" });
    let cert_path = sub.join(format!("{name}.pem"));
    let key_path = sub.join(format!("{name}.key"));
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let mut index = read_index(dir)?;
    index.push(IndexEntry {
        name: name.to_string(),
        kind: kind.to_string(),
        serial: serial_hex.clone(),
        not_after: unix(validity.not_after),
        revoked: false,
        revoked_at: None,
    });
    write_index(dir, &index)?;
    Ok(IssuedPaths {
        cert: cert_path,
        key: key_path,
        serial: serial_hex,
    })
}

/// Issues an agent certificate named `name` (its identity and `host` label).
pub fn issue_agent(dir: &Path, name: &str, validity: Validity) -> Result<IssuedPaths, PkiError> {
    issue(dir, name, "agent", validity)
}

/// Issues a server certificate for `dns_name` (a DNS name or an IP address).
pub fn issue_server(
    dir: &Path,
    dns_name: &str,
    validity: Validity,
) -> Result<IssuedPaths, PkiError> {
    issue(dir, dns_name, "server", validity)
}

/// Revokes every certificate issued to `name` and rewrites `crl.pem`.
pub fn revoke(dir: &Path, name: &str) -> Result<RevokeOutcome, PkiError> {
    let mut index = read_index(dir)?;
    if !index.iter().any(|e| e.name == name) {
        return Err(PkiError::UnknownName(name.to_string(), dir.to_path_buf()));
    }
    let now = unix(SystemTime::now());
    let mut serials = Vec::new();
    for e in index.iter_mut().filter(|e| e.name == name && !e.revoked) {
        e.revoked = true;
        e.revoked_at = Some(now);
        serials.push(e.serial.clone());
    }
    let issuer = load_issuer(dir)?;
    let number = crl_number(dir) + 1;
    write_crl(dir, &issuer, &index, number)?;
    write_file(
        &dir.join("crl.number"),
        format!("{number}\n").as_bytes(),
        0o644,
    )?;
    write_index(dir, &index)?;
    Ok(RevokeOutcome {
        name: name.to_string(),
        serials,
    })
}

/// The identity in a certificate: its subject common name, else its first DNS name.
pub fn identity_from_cert_der(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        if validate_name(cn).is_ok() {
            return Ok(cn.to_string());
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                if validate_name(d).is_ok() {
                    return Ok(d.to_string());
                }
            }
        }
    }
    Err(PkiError::Parse(
        "certificate names no usable identity (common name or DNS name)".into(),
    ))
}

/// A certificate's expiry.
pub fn cert_not_after(der: &[u8]) -> Result<SystemTime, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// A certificate's serial number as bytes (big-endian, no sign padding).
pub fn cert_serial(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert
        .raw_serial()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect())
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|e| PkiError::Pem(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem(
            path.to_path_buf(),
            "no certificate found".into(),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| PkiError::Pem(path.to_path_buf(), format!("no private key found ({e})")))
}

/// Every CRL in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let crls: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
    let crls = crls.map_err(|e| PkiError::Pem(path.to_path_buf(), e.to_string()))?;
    if crls.is_empty() {
        return Err(PkiError::Pem(
            path.to_path_buf(),
            "no revocation list found".into(),
        ));
    }
    Ok(crls)
}

/// Serial numbers revoked by the CRLs in `path`.
pub fn revoked_serials(path: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for crl in load_crls(path)? {
        let (_, parsed) = <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(&crl)
            .map_err(|e| PkiError::Pem(path.to_path_buf(), e.to_string()))?;
        for r in parsed.iter_revoked_certificates() {
            out.push(
                r.raw_serial()
                    .iter()
                    .copied()
                    .skip_while(|b| *b == 0)
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, "test").unwrap();
        let mode = std::fs::metadata(d.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(init(d, "again"), Err(PkiError::Exists(_))));
        let issued = issue_agent(d, "web-1", Validity::days(1)).unwrap();
        assert_eq!(
            std::fs::metadata(&issued.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let der = &load_certs(&issued.cert).unwrap()[0];
        assert_eq!(identity_from_cert_der(der).unwrap(), "web-1");
        assert!(revoked_serials(&d.join("crl.pem")).unwrap().is_empty());
        let out = revoke(d, "web-1").unwrap();
        assert_eq!(out.serials.len(), 1);
        assert_eq!(
            revoked_serials(&d.join("crl.pem")).unwrap(),
            vec![cert_serial(der).unwrap()]
        );
        assert!(matches!(
            revoke(d, "nobody"),
            Err(PkiError::UnknownName(..))
        ));
        assert!(matches!(
            issue_agent(d, "../evil", Validity::days(1)),
            Err(PkiError::InvalidName(_))
        ));
        assert!(matches!(
            issue_agent(d, "", Validity::days(1)),
            Err(PkiError::InvalidName(_))
        ));
    }

    #[test]
    fn loaders_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "").unwrap();
        let e = load_certs(&p).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = load_key(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }
}
