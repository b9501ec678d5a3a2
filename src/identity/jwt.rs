//! Callers identified by a verified JSON Web Token: the value of one claim
//! (e.g. `sub`, or a tenant claim) of a token sent as
//! `Authorization: Bearer <token>`, signed with HS256 (a shared secret), or
//! RS256/ES256 (a PEM public key, or a JWKS file whose keys are chosen by
//! `kid`). `exp` and `nbf` are honoured; the issuer and the audience are
//! checked when configured. A token that does not verify is refused, never
//! counted as an identity; the claim's value is never logged whole. A JWKS
//! file is reread every second: rotated keys apply without a restart.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    /// HS256 with this secret (JWT_SECRET).
    Secret(String),
    /// RS256 or ES256 with this PEM public key (JWT_PUBLIC_KEY_FILE).
    PemFile(PathBuf),
    /// Any key of this JWKS file, chosen by the token's `kid`
    /// (JWT_JWKS_FILE).
    JwksFile(PathBuf),
}

/// The JWT_* settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The claim whose value is the caller's identity (JWT_CLAIM).
    pub claim: String,
    pub keys: JwtKeySource,
    /// JWT_ISSUER, checked when set.
    pub issuer: Option<String>,
    /// JWT_AUDIENCE, checked when set.
    pub audience: Option<String>,
}

/// Why the verifier cannot be built (a start-up error naming the setting).
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct JwtSetupError {
    pub setting: &'static str,
    pub problem: String,
}

/// Why a token is refused (the caller gets 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a valid JWT: {0}")]
    Invalid(String),
    #[error("the bearer token has no usable claim {0:?}")]
    MissingClaim(String),
}

enum Keys {
    One(Vec<(DecodingKey, Algorithm)>),
    Set(JwkSet),
}

pub struct JwtVerifier {
    settings: JwtSettings,
    /// Swapped whole when a JWKS file changes (keys rotated).
    keys: arc_swap::ArcSwap<Keys>,
    /// The JWKS file's contents as last loaded.
    jwks_text: std::sync::Mutex<Vec<u8>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("claim", &self.settings.claim)
            .finish_non_exhaustive()
    }
}

fn parse_jwks(path: &Path, json: &[u8]) -> Result<JwkSet, JwtSetupError> {
    serde_json::from_slice(json).map_err(|err| JwtSetupError {
        setting: "JWT_JWKS_FILE",
        problem: format!("{}: not a JWKS document: {err}", path.display()),
    })
}

fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, JwtSetupError> {
    std::fs::read(path).map_err(|err| JwtSetupError {
        setting,
        problem: format!("cannot read {}: {err}", path.display()),
    })
}

impl JwtVerifier {
    /// Loads the keys; a file that cannot be read or parsed stops the start.
    pub fn new(settings: JwtSettings) -> Result<Self, JwtSetupError> {
        let mut jwks_text = Vec::new();
        let keys = match &settings.keys {
            JwtKeySource::Secret(secret) => Keys::One(vec![(
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )]),
            JwtKeySource::PemFile(path) => {
                let pem = read(path, "JWT_PUBLIC_KEY_FILE")?;
                let mut keys = Vec::new();
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    keys.push((key, Algorithm::RS256));
                }
                if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    keys.push((key, Algorithm::ES256));
                }
                if keys.is_empty() {
                    return Err(JwtSetupError {
                        setting: "JWT_PUBLIC_KEY_FILE",
                        problem: format!("{}: not an RSA or EC public key in PEM", path.display()),
                    });
                }
                Keys::One(keys)
            }
            JwtKeySource::JwksFile(path) => {
                jwks_text = read(path, "JWT_JWKS_FILE")?;
                Keys::Set(parse_jwks(path, &jwks_text)?)
            }
        };
        Ok(JwtVerifier {
            settings,
            keys: arc_swap::ArcSwap::from_pointee(keys),
            jwks_text: std::sync::Mutex::new(jwks_text),
        })
    }

    /// The JWKS file to watch, if keys come from one.
    pub fn jwks_file(&self) -> Option<&Path> {
        match &self.settings.keys {
            JwtKeySource::JwksFile(path) => Some(path),
            _ => None,
        }
    }

    /// Rereads the JWKS file; a changed, valid one replaces the keys (a key
    /// rotation), a broken one is refused and the keys in force stay.
    /// Whether the keys changed.
    pub fn reload_jwks(&self) -> Result<bool, JwtSetupError> {
        let Some(path) = self.jwks_file() else {
            return Ok(false);
        };
        let text = read(path, "JWT_JWKS_FILE")?;
        let mut last = self.jwks_text.lock().unwrap_or_else(|e| e.into_inner());
        if *last == text {
            return Ok(false);
        }
        let set = parse_jwks(path, &text);
        // Remembered even when refused, so a broken file is reported once.
        *last = text;
        self.keys.store(std::sync::Arc::new(Keys::Set(set?)));
        Ok(true)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.required_spec_claims.insert("exp".to_owned());
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    /// The identity in `token`: its claim's value, once the token verifies.
    pub fn identity(&self, token: &str) -> Result<String, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let keys = self.keys.load();
        let candidates: Vec<(DecodingKey, Algorithm)> = match keys.as_ref() {
            Keys::One(keys) => keys
                .iter()
                .filter(|(_, a)| *a == header.alg)
                .cloned()
                .collect(),
            Keys::Set(set) => header
                .kid
                .as_deref()
                .and_then(|kid| set.find(kid))
                .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
                .map(|key| vec![(key, header.alg)])
                .unwrap_or_default(),
        };
        if candidates.is_empty() {
            return Err(TokenError::Invalid(format!(
                "no key for algorithm {:?} (kid {:?})",
                header.alg, header.kid
            )));
        }
        let mut last = String::new();
        for (key, algorithm) in candidates {
            match decode::<serde_json::Value>(token, &key, &self.validation(algorithm)) {
                Ok(data) => {
                    return match data.claims.get(&self.settings.claim) {
                        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                        _ => Err(TokenError::MissingClaim(self.settings.claim.clone())),
                    }
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(TokenError::Invalid(last))
    }
}
