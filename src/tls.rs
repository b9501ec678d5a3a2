//! TLS, one stack for everything: rustls with the ring provider, for Redis
//! (through the redis crate), the gRPC listener and the HTTP listener.
//!
//! The listeners' certificates rotate without a restart: a
//! [`ReloadingCert`] serves the certificate in force to every new
//! handshake, and [`watch`] re-reads the files every second (cert-manager
//! rewrites them in place) and swaps in a new pair once it loads and
//! matches; a pair that does not is logged and the old one stays.
//! Connections already open keep the certificate they shook hands with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore, ServerConfig};

use crate::config::{RedisTls, XdsTls};

/// The crypto provider: ring. rustls marks it deprecated because ring has
/// no post-quantum key exchange; aws-lc-rs has one but needs a C build
/// (cmake on some machines) that a fresh clone should not, and ring is
/// already built for the JWT code. Revisit when ring gains ML-KEM.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Makes ring the process's crypto provider (rustls is built without a
/// default one). Idempotent.
pub fn install_crypto_provider() {
    let _ = provider().install_default();
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

/// When a certificate stops being valid, in Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A certificate chain and its key, checked: they parse, the key is the
/// certificate's, and the certificate has not expired.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = read_certs(cert)?;
    if let Some(end) = not_after(&certs[0]) {
        if end < now_unix() {
            return Err(format!(
                "{}: the certificate expired at {}",
                cert.display(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(end.max(0) as u64)
                )
            ));
        }
    }
    let key = read_key(key)?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "the key does not match the certificate".to_owned(),
        other => format!("unusable key: {other}"),
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A setting at fault, and what is wrong with it.
pub type SettingProblem = (&'static str, String);

/// Checks the REDIS_TLS_* files at start: Err((setting, problem)).
pub fn check_redis_files(tls: &RedisTls) -> Result<(), SettingProblem> {
    if let Some(ca) = &tls.ca {
        root_store(ca).map_err(|p| ("REDIS_TLS_CACERT", p))?;
    }
    if let Some((cert, key)) = &tls.client {
        read_key(key).map_err(|p| ("REDIS_TLS_CLIENT_KEY", p))?;
        load_pair(cert, key).map_err(|p| {
            let setting = if p.contains("key") {
                "REDIS_TLS_CLIENT_KEY"
            } else {
                "REDIS_TLS_CLIENT_CERT"
            };
            (setting, p)
        })?;
    }
    Ok(())
}

/// The redis crate's form of the REDIS_TLS_* files.
pub fn redis_certificates(tls: &RedisTls) -> std::io::Result<redis::TlsCertificates> {
    Ok(redis::TlsCertificates {
        client_tls: match &tls.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(cert)?,
                client_key: std::fs::read(key)?,
            }),
            None => None,
        },
        root_cert: tls.ca.as_ref().map(std::fs::read).transpose()?,
    })
}

/// The TLS client configuration for the xDS server (HTTP/2 by ALPN): its
/// CAs (or the system's roots) and this service's certificate, read now.
/// Err names the setting at fault.
pub fn client_config(tls: &XdsTls) -> Result<rustls::ClientConfig, SettingProblem> {
    let roots = match &tls.ca {
        Some(ca) => root_store(ca).map_err(|p| ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", p))?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err((
                    "CONFIG_GRPC_XDS_SERVER_TLS_CACERT",
                    "unset, and the system has no CA certificates: set it".into(),
                ));
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("CONFIG_GRPC_XDS_SERVER_USE_TLS", e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some((cert, key)) => {
            let pair = load_pair(cert, key).map_err(|p| {
                let setting = if p.contains("key") {
                    "CONFIG_GRPC_XDS_CLIENT_TLS_KEY"
                } else {
                    "CONFIG_GRPC_XDS_CLIENT_TLS_CERT"
                };
                (setting, p)
            })?;
            builder
                .with_client_auth_cert(
                    pair.cert,
                    read_key(key).map_err(|p| ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", p))?,
                )
                .map_err(|e| ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A listener's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// And it must name this DNS name or IP address.
    pub client_san: Option<String>,
    /// The settings' names, for error lines: (cert, key, client CA).
    pub names: (&'static str, &'static str, &'static str),
}

/// The certificate a listener serves, swapped when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
    /// The files' contents as last loaded.
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let pair = load_pair(cert, key)?;
        let seen = (
            std::fs::read(cert).unwrap_or_default(),
            std::fs::read(key).unwrap_or_default(),
        );
        Ok(ReloadingCert {
            current: ArcSwap::from_pointee(pair),
            cert: cert.to_owned(),
            key: key.to_owned(),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// Re-reads the files; swaps in the new pair when they changed and it
    /// loads. Ok(true) when swapped.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let files = (
            std::fs::read(&self.cert).map_err(|e| format!("{}: {e}", self.cert.display()))?,
            std::fs::read(&self.key).map_err(|e| format!("{}: {e}", self.key.display()))?,
        );
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == files {
            return Ok(false);
        }
        // A rewrite in progress (the certificate new, the key not yet)
        // fails here and is tried again next second.
        let pair = load_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        *seen = files;
        Ok(true)
    }

    /// When the certificate in force expires (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.current.load().cert.first().and_then(not_after)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// mTLS that also pins the client's name (GRPC_CLIENT_TLS_SAN).
#[derive(Debug)]
struct PinnedSan {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for PinnedSan {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("client certificate: {e}")))?;
        cert.verify_is_valid_for_subject_name(&self.name)
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A listener's rustls configuration with `alpn` (e.g. `h2`), and the
/// reloading certificate it serves; Err((setting, problem)).
pub fn server_config(
    settings: &ServerTlsSettings,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), SettingProblem> {
    let (cert_name, key_name, ca_name) = settings.names;
    read_key(&settings.key).map_err(|p| (key_name, p))?;
    let cert = Arc::new(
        ReloadingCert::load(&settings.cert, &settings.key).map_err(|p| {
            let setting = if p.contains("key") {
                key_name
            } else {
                cert_name
            };
            (setting, p)
        })?,
    );
    let builder = ServerConfig::builder();
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = root_store(ca).map_err(|p| (ca_name, p))?;
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| (ca_name, format!("cannot verify clients with it: {e}")))?;
            let verifier: Arc<dyn ClientCertVerifier> = match &settings.client_san {
                None => verifier,
                Some(name) => Arc::new(PinnedSan {
                    inner: verifier,
                    name: ServerName::try_from(name.clone()).map_err(|_| {
                        (
                            "GRPC_CLIENT_TLS_SAN",
                            format!("{name:?} is not a DNS name or an IP address"),
                        )
                    })?,
                }),
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), cert))
}

/// Re-reads each listener's certificate files every second for as long as
/// the process runs, logging each swap and each pair refused, and keeps
/// the expiry gauge of each listener's certificate in force.
pub fn watch(
    certs: Vec<(&'static str, Arc<ReloadingCert>)>,
    metrics: Arc<crate::telemetry::Metrics>,
) {
    if certs.is_empty() {
        return;
    }
    let expiry = move |listener: &str, cert: &ReloadingCert| {
        if let Some(end) = cert.not_after() {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[listener])
                .set(end);
        }
    };
    for (listener, cert) in &certs {
        expiry(listener, cert);
    }
    tokio::spawn(async move {
        let mut failing = vec![false; certs.len()];
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, (listener, cert)) in certs.iter().enumerate() {
                let cert = cert.clone();
                let result = tokio::task::spawn_blocking(move || cert.reload_if_changed())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match result {
                    Ok(true) => {
                        failing[i] = false;
                        expiry(listener, &certs[i].1);
                        log::info!("tls: {listener} serves the new certificate");
                    }
                    Ok(false) => failing[i] = false,
                    Err(problem) if !failing[i] => {
                        failing[i] = true;
                        log::warn!("tls: {listener}: new certificate refused, the old one stays: {problem}");
                    }
                    Err(_) => {}
                }
            }
        }
    });
}
