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
            // The key decides the algorithm, not the token: its `alg` when
            // it has one, else the family of its type.
            Keys::Set(set) => header
                .kid
                .as_deref()
                .and_then(|kid| set.find(kid))
                .filter(|jwk| jwk_allows(jwk, header.alg))
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
                    // A string only: a number 42 and a string "42" would be
                    // one identity (RFC 7519 makes `sub` a string). And
                    // text that reads as something else is refused.
                    return match data.claims.get(&self.settings.claim) {
                        Some(serde_json::Value::String(s)) if usable_claim(s) => Ok(s.clone()),
                        _ => Err(TokenError::MissingClaim(self.settings.claim.clone())),
                    };
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(TokenError::Invalid(last))
    }
}

/// Longest claim value taken as an identity, in bytes.
pub const MAX_CLAIM_BYTES: usize = 256;

/// Whether a claim's text can be an identity: not empty, at most
/// [`MAX_CLAIM_BYTES`], and without control, bidirectional-override or
/// zero-width characters (which make two identities look alike in a log
/// line, the admin API or the dashboard, or one look like another).
fn usable_claim(claim: &str) -> bool {
    !claim.is_empty()
        && claim.len() <= MAX_CLAIM_BYTES
        && !claim.chars().any(|c| {
            c.is_control()
                || matches!(c,
                    '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                    | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        })
}

/// Whether a JWKS key may verify a token signed with `alg`: the key's own
/// `alg` when it names one; else an algorithm of the key's type (RSA: RS*
/// and PS*; EC: ES*; a symmetric key: HS*; OKP: EdDSA).
fn jwk_allows(jwk: &jsonwebtoken::jwk::Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::AlgorithmParameters as Params;
    if let Some(own) = jwk.common.key_algorithm {
        return own.to_string().parse::<Algorithm>() == Ok(alg);
    }
    match &jwk.algorithm {
        Params::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        Params::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        Params::OctetKey(_) => {
            matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        }
        Params::OctetKeyPair(_) => alg == Algorithm::EdDSA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 19, item 16): claims with bidi or zero-width
    /// characters were accepted.
    #[test]
    fn claims_that_read_as_something_else_are_refused() {
        assert!(usable_claim("tenant-acme"));
        assert!(usable_claim("Ünïcode-ok"));
        for bad in [
            "",
            "tenant\u{202E}emca",
            "ten\u{200B}ant",
            "a\u{2066}b",
            "\u{FEFF}x",
            "a\nb",
        ] {
            assert!(!usable_claim(bad), "{bad:?}");
        }
        assert!(!usable_claim(&"x".repeat(MAX_CLAIM_BYTES + 1)));
    }

    /// Regression (issue 19, item 16): with JWKS, the token's header chose
    /// the algorithm; a JWK's `alg` was ignored.
    #[test]
    fn a_jwks_key_decides_its_algorithm() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys":[
                {"kty":"oct","kid":"h","alg":"HS512","k":"c2VjcmV0"},
                {"kty":"oct","kid":"any","k":"c2VjcmV0"}
            ]}"#,
        )
        .unwrap();
        let h = set.find("h").unwrap();
        assert!(jwk_allows(h, Algorithm::HS512));
        assert!(!jwk_allows(h, Algorithm::HS256));
        let any = set.find("any").unwrap();
        assert!(jwk_allows(any, Algorithm::HS256));
        assert!(!jwk_allows(any, Algorithm::RS256));
    }
}
