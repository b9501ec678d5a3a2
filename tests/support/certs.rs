//! Certificates the TLS tests make with rcgen: a CA, and leaf certificates
//! it signs (for servers and clients, valid until 2099 unless asked
//! otherwise), each written as PEM files in a private directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::TempDir;

/// A certificate and its key on disk.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    pub fn key_str(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A test CA with its own directory.
pub struct Pki {
    pub dir: TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{tag} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        Pki { dir, issuer, ca }
    }

    pub fn ca_str(&self) -> &str {
        self.ca.to_str().unwrap()
    }

    /// A certificate for `names` (DNS names or IP addresses), for servers
    /// and clients, valid until 2099.
    pub fn issue(&self, file: &str, names: &[&str]) -> Pair {
        self.issue_until(file, names, 2099)
    }

    /// The same, valid until the first of January of `year` (2021: expired).
    pub fn issue_until(&self, file: &str, names: &[&str], year: i32) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}
