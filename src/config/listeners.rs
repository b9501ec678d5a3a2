//! TLS on the two listeners: the HTTP port (TLS_CERT_FILE, TLS_KEY_FILE,
//! TLS_CLIENT_CA_FILE) and the gRPC port, with envoyproxy/ratelimit's
//! settings (GRPC_SERVER_USE_TLS, GRPC_SERVER_TLS_CERT and _KEY, the client
//! CA from GRPC_CLIENT_TLS_CACERT or Envoy Gateway's GRPC_SERVER_TLS_CA_CERT,
//! GRPC_CLIENT_TLS_SAN). The files are checked when the listener is built.

use super::env::{existing_file, Env};
use super::ConfigError;
use crate::tls::ServerTlsSettings;

/// TLS on PORT, when TLS_CERT_FILE is set.
pub(super) fn http_tls(env: &Env<'_>) -> Result<Option<ServerTlsSettings>, ConfigError> {
    let cert = env.optional("TLS_CERT_FILE", existing_file)?;
    let key = env.optional("TLS_KEY_FILE", existing_file)?;
    let ca = env.optional("TLS_CLIENT_CA_FILE", existing_file)?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(ServerTlsSettings {
            cert,
            key,
            client_ca: ca,
            client_san: None,
            names: ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"),
        })),
        (None, None) if ca.is_some() => Err(ConfigError::new(
            "TLS_CLIENT_CA_FILE",
            &env.get("TLS_CLIENT_CA_FILE").unwrap_or_default(),
            "set TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS needs TLS",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            "TLS_KEY_FILE",
            "",
            "TLS_CERT_FILE is set: give its key too",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "TLS_CERT_FILE",
            "",
            "TLS_KEY_FILE is set: give its certificate too",
        )),
    }
}

/// TLS on GRPC_PORT, when GRPC_SERVER_USE_TLS is true.
pub(super) fn grpc_tls(env: &Env<'_>) -> Result<Option<ServerTlsSettings>, ConfigError> {
    let on = env.bool("GRPC_SERVER_USE_TLS")?;
    let cert = env.optional("GRPC_SERVER_TLS_CERT", existing_file)?;
    let key = env.optional("GRPC_SERVER_TLS_KEY", existing_file)?;
    let ca = env.optional("GRPC_CLIENT_TLS_CACERT", existing_file)?;
    let ca_alias = env.optional("GRPC_SERVER_TLS_CA_CERT", existing_file)?;
    let san = env.get("GRPC_CLIENT_TLS_SAN");
    if !on {
        return Ok(None);
    }
    let missing = |name: &'static str| {
        ConfigError::new(
            name,
            "",
            "GRPC_SERVER_USE_TLS is true: set it to a PEM file",
        )
    };
    let cert = cert.ok_or_else(|| missing("GRPC_SERVER_TLS_CERT"))?;
    let key = key.ok_or_else(|| missing("GRPC_SERVER_TLS_KEY"))?;
    // envoyproxy/ratelimit reads the client CA from GRPC_CLIENT_TLS_CACERT;
    // Envoy Gateway's Deployment sets GRPC_SERVER_TLS_CA_CERT.
    let (client_ca, ca_name) = match (ca, ca_alias) {
        (Some(ca), _) => (Some(ca), "GRPC_CLIENT_TLS_CACERT"),
        (None, Some(ca)) => (Some(ca), "GRPC_SERVER_TLS_CA_CERT"),
        (None, None) => (None, "GRPC_CLIENT_TLS_CACERT"),
    };
    if san.is_some() && client_ca.is_none() {
        return Err(ConfigError::new(
            "GRPC_CLIENT_TLS_SAN",
            &san.unwrap_or_default(),
            "pinning the client's name needs client certificates: set GRPC_CLIENT_TLS_CACERT",
        ));
    }
    Ok(Some(ServerTlsSettings {
        cert,
        key,
        client_ca,
        client_san: san,
        names: ("GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY", ca_name),
    }))
}
