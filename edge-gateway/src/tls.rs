//! The WebTransport endpoint's TLS certificate: the operator's (`TLS_CERT`/`TLS_KEY`), or a
//! self-signed one that browsers accept by its hash.
//!
//! WebTransport is HTTP/3, so it always runs over TLS. In production the operator gives a
//! certificate a browser trusts (PEM files, loaded once at start; rotate with a rollout). Without
//! one the gateway makes its own: ECDSA P-256, valid [`SELF_SIGNED_LIFETIME`] (13 days, one hour
//! of it before now for clock skew). That is what Chromium requires to accept a certificate by
//! `serverCertificateHashes` instead of a CA: ECDSA, and at most 14 days of validity (a 20-day
//! one fails with `QUIC_TLS_CERTIFICATE_UNKNOWN`). A page fetches the SHA-256 of the DER
//! certificate from `GET /api/wt/cert-hash` and passes it to `new WebTransport(...)`.
//!
//! A self-signed certificate is replaced by a new one [`SELF_SIGNED_RENEW_AFTER`] after it was
//! made (7 days, long before it expires), without a restart: rustls asks [`Certificates`] for
//! the certificate on every handshake, so new sessions get the new one at once and open ones keep
//! theirs. The hash endpoint always tells the certificate new handshakes get; a page that
//! pinned the previous hash fails one connect, fetches the hash again and reconnects.
//!
//! A bad `TLS_CERT`/`TLS_KEY` (one without the other, a missing file, no PEM in it, a key that
//! does not match the certificate) is a [`TlsError`] naming the setting; `main` stops start-up
//! with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Validity of a self-signed certificate, from one hour before it is made. Chromium accepts at
/// most 14 days for `serverCertificateHashes`.
pub const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(13 * 24 * 3600);
/// How long a self-signed certificate is served before a new one replaces it.
pub const SELF_SIGNED_RENEW_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far `not_before` is set in the past, for clients whose clock is a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Names a self-signed certificate is issued for (browsers pinning its hash ignore them).
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why the certificate cannot be used. [`TlsError::setting`] names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{given} is set but {missing} is not: give both, or neither for a self-signed certificate"
    )]
    OnlyOne {
        given: &'static str,
        missing: &'static str,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM {what} ({why})", path.display())]
    NoPem {
        setting: &'static str,
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("{} is not usable with {}: {source}", key.display(), cert.display())]
    KeyRejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot use the self-signed certificate: {0}")]
    SelfSigned(rustls::Error),
}

impl TlsError {
    /// The setting an operator has to fix.
    pub fn setting(&self) -> &'static str {
        match self {
            TlsError::OnlyOne { missing, .. } => missing,
            TlsError::Read { setting, .. } | TlsError::NoPem { setting, .. } => setting,
            TlsError::KeyRejected { .. } => "TLS_KEY",
            TlsError::Generate(_) | TlsError::SelfSigned(_) => "TLS_CERT",
        }
    }
}

/// The certificate the WebTransport endpoint serves. Cheap to clone.
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<CryptoProvider>,
    self_signed: bool,
    current: RwLock<Arc<Served>>,
}

/// One certificate with what the hash endpoint tells about it.
struct Served {
    key: Arc<CertifiedKey>,
    sha256: [u8; 32],
    /// Only known (and only needed) for self-signed certificates.
    not_after: Option<SystemTime>,
}

/// What `GET /api/wt/cert-hash` tells a browser about the current certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertHash {
    /// SHA-256 of the DER certificate.
    pub sha256: [u8; 32],
    pub self_signed: bool,
    pub not_after: Option<SystemTime>,
}

impl CertHash {
    /// The hash in lower-case hex.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("self_signed", &self.inner.self_signed)
            .field("sha256", &self.current().hex())
            .finish()
    }
}

impl Certificates {
    /// The operator's certificate when both paths are given, a self-signed one when neither is.
    pub fn load(cert: Option<&Path>, key: Option<&Path>) -> Result<Certificates, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Certificates::from_files(cert, key),
            (None, None) => Certificates::self_signed(),
            (Some(_), None) => Err(TlsError::OnlyOne {
                given: "TLS_CERT",
                missing: "TLS_KEY",
            }),
            (None, Some(_)) => Err(TlsError::OnlyOne {
                given: "TLS_KEY",
                missing: "TLS_CERT",
            }),
        }
    }

    /// PEM files: the certificate chain (leaf first) and its private key (PKCS#8, SEC1 or
    /// PKCS#1).
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Certificates, TlsError> {
        let cert_pem = read("TLS_CERT", cert_path)?;
        let key_pem = read("TLS_KEY", key_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| no_pem("TLS_CERT", cert_path, "certificate", err.to_string()))?;
        if chain.is_empty() {
            return Err(no_pem(
                "TLS_CERT",
                cert_path,
                "certificate",
                "no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|err| no_pem("TLS_KEY", key_path, "private key", err.to_string()))?;
        let provider = provider();
        let served =
            Served::new(chain, key, &provider, None).map_err(|source| TlsError::KeyRejected {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
                source,
            })?;
        Ok(Certificates::with(provider, false, served))
    }

    /// A new self-signed ECDSA P-256 certificate, valid from an hour ago for
    /// [`SELF_SIGNED_LIFETIME`].
    pub fn self_signed() -> Result<Certificates, TlsError> {
        let provider = provider();
        let served = generate(&provider, SystemTime::now())?;
        Ok(Certificates::with(provider, true, served))
    }

    fn with(provider: Arc<CryptoProvider>, self_signed: bool, served: Served) -> Certificates {
        Certificates {
            inner: Arc::new(Inner {
                provider,
                self_signed,
                current: RwLock::new(Arc::new(served)),
            }),
        }
    }

    pub fn is_self_signed(&self) -> bool {
        self.inner.self_signed
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> CertHash {
        let served = self.inner.current.read();
        CertHash {
            sha256: served.sha256,
            self_signed: self.inner.self_signed,
            not_after: served.not_after,
        }
    }

    /// The rustls server configuration: TLS 1.3 (QUIC has nothing else), ALPN `h3`, and this
    /// certificate store as the resolver, so a renewal reaches new handshakes without a restart.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&self.inner.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
        Ok(config)
    }

    /// Replaces a self-signed certificate [`SELF_SIGNED_RENEW_AFTER`] after it was made, for as
    /// long as the process runs. Returns at once for an operator's certificate.
    pub async fn renew_self_signed(self) {
        if !self.inner.self_signed {
            return;
        }
        loop {
            tokio::time::sleep(SELF_SIGNED_RENEW_AFTER).await;
            match self.renew(SystemTime::now()) {
                Ok(hash) => {
                    tracing::info!(sha256 = %hash.hex(), "self-signed WebTransport certificate renewed")
                }
                // The current certificate stays valid for days: try again in an hour.
                Err(err) => {
                    tracing::error!(error = %err, "cannot renew the self-signed WebTransport certificate");
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
        }
    }

    /// Makes and installs a new self-signed certificate valid from `now`.
    fn renew(&self, now: SystemTime) -> Result<CertHash, TlsError> {
        let served = generate(&self.inner.provider, now)?;
        *self.inner.current.write() = Arc::new(served);
        Ok(self.current())
    }
}

impl Served {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        provider: &CryptoProvider,
        not_after: Option<SystemTime>,
    ) -> Result<Served, rustls::Error> {
        let key = CertifiedKey::from_der(chain, key, provider)?;
        let leaf = key.end_entity_cert()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(digest.as_ref());
        Ok(Served {
            key: Arc::new(key),
            sha256,
            not_after,
        })
    }
}

/// Hands rustls the current certificate on every handshake.
#[derive(Debug)]
struct Resolver(Certificates);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.inner.current.read().key))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

fn no_pem(setting: &'static str, path: &Path, what: &'static str, why: String) -> TlsError {
    TlsError::NoPem {
        setting,
        path: path.to_owned(),
        what,
        why,
    }
}

/// An ECDSA P-256 certificate for [`SELF_SIGNED_NAMES`], valid from an hour before `now` for
/// [`SELF_SIGNED_LIFETIME`].
fn generate(provider: &CryptoProvider, now: SystemTime) -> Result<Served, TlsError> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let names = SELF_SIGNED_NAMES
        .iter()
        .map(|n| (*n).to_owned())
        .collect::<Vec<_>>();
    let mut params = rcgen::CertificateParams::new(names)?;
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    let not_after = not_before + SELF_SIGNED_LIFETIME;
    params.not_before = offset_date_time(not_before);
    params.not_after = offset_date_time(not_after);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "datastream edge-gateway (self-signed)",
    );
    let cert = params.self_signed(&key_pair)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    Served::new(vec![cert.der().clone()], key, provider, Some(not_after))
        .map_err(TlsError::SelfSigned)
}

fn offset_date_time(at: SystemTime) -> time::OffsetDateTime {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(certs: &Certificates) -> CertificateDer<'static> {
        certs.inner.current.read().key.cert[0].clone()
    }

    #[test]
    fn self_signed_is_ecdsa_p256_within_chromiums_limit() {
        let certs = Certificates::self_signed().unwrap();
        let der = leaf(&certs);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let validity = parsed.validity();
        let days =
            (validity.not_after.timestamp() - validity.not_before.timestamp()) as f64 / 86_400.0;
        assert!(days <= 14.0, "{days} days");
        assert_eq!(
            parsed.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1",
            "id-ecPublicKey"
        );
        let hash = certs.current();
        assert!(hash.self_signed);
        assert_eq!(
            hash.sha256.as_slice(),
            ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
        );
        assert_eq!(hash.hex().len(), 64);
        assert!(SELF_SIGNED_RENEW_AFTER < SELF_SIGNED_LIFETIME - CLOCK_SKEW);
    }

    #[test]
    fn renewal_changes_what_new_handshakes_get() {
        let certs = Certificates::self_signed().unwrap();
        let before = certs.current();
        let later = SystemTime::now() + SELF_SIGNED_RENEW_AFTER;
        let after = certs.renew(later).unwrap();
        assert_ne!(before.sha256, after.sha256);
        assert_eq!(certs.current(), after);
        assert!(after.not_after.unwrap() > before.not_after.unwrap());
        let resolver = Resolver(certs.clone());
        let served = Arc::clone(&resolver.0.inner.current.read().key);
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &served.cert[0]).as_ref(),
            after.sha256.as_slice()
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Certificates::load(Some(&missing), None).unwrap_err();
        assert_eq!(err.setting(), "TLS_KEY");
        let err = Certificates::load(None, Some(&missing)).unwrap_err();
        assert_eq!(err.setting(), "TLS_CERT");
        let err = Certificates::load(Some(&missing), Some(&missing)).unwrap_err();
        assert_eq!(err.setting(), "TLS_CERT");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = Certificates::load(Some(&garbage), Some(&garbage)).unwrap_err();
        assert_eq!(err.setting(), "TLS_CERT");

        // A certificate with someone else's key.
        let mine = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let theirs = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, mine.cert.pem()).unwrap();
        std::fs::write(&key, theirs.serialize_pem()).unwrap();
        let err = Certificates::load(Some(&cert), Some(&key)).unwrap_err();
        assert_eq!(err.setting(), "TLS_KEY", "{err}");
        std::fs::write(&key, mine.signing_key.serialize_pem()).unwrap();
        let certs = Certificates::load(Some(&cert), Some(&key)).unwrap();
        assert!(!certs.current().self_signed);
        assert_eq!(certs.current().not_after, None);
        assert_eq!(leaf(&certs).as_ref(), mine.cert.der().as_ref());
    }
}
