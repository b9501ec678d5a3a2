//! JWT identities: a verified token's claim is the caller's identity; a
//! token that does not verify gets 401 and is never counted.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{eventually, require, spawn_app, unique_key, RedisServer, TempDir, TestApp};

const SECRET: &str = "a-test-secret-of-some-length-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value, secret: &str, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A key pair made by openssl in `dir`: `genpkey -algorithm <algorithm...>`
/// for the private key (PKCS#8 PEM), its public key beside it.
fn key_pair(dir: &TempDir, algorithm: &[&str]) -> (PathBuf, PathBuf) {
    let openssl = require("openssl");
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    assert!(Command::new(&openssl)
        .args(["genpkey", "-algorithm"])
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    assert!(Command::new(&openssl)
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success());
    (private, public)
}

/// An openssl key pair (`algorithm`), the service verifying tokens with
/// its public key (JWT_PUBLIC_KEY_FILE, claim `sub`), and the private key
/// to sign them with.
async fn public_key_app(
    redis: &RedisServer,
    dir: &TempDir,
    algorithm: &[&str],
    encoding_key: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
) -> (TestApp, EncodingKey) {
    let (private, public) = key_pair(dir, algorithm);
    let app = spawn_app(
        redis,
        &[
            ("JWT_CLAIM", "sub"),
            ("JWT_PUBLIC_KEY_FILE", public.to_str().unwrap()),
        ],
    )
    .await;
    let key = encoding_key(&std::fs::read(&private).unwrap()).unwrap();
    (app, key)
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(algorithm), &claims, key).unwrap()
}

async fn status(app: &TestApp, token: &str) -> (u16, Value) {
    let r = app
        .client
        .get(app.url("/rate-limit/status"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn hs256_tokens_identify_by_claim_and_bad_ones_get_401() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("JWT_CLAIM", "tenant"),
            ("JWT_SECRET", SECRET),
            ("JWT_AUDIENCE", "api"),
            ("JWT_ISSUER", "https://issuer.test"),
        ],
    )
    .await;
    let tenant = unique_key("tenant");
    let claims = |extra: Value| {
        let mut c = json!({"tenant": tenant, "aud": "api", "iss": "https://issuer.test", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let (code, body) = status(&app, &hs256(claims(json!({})), SECRET, None)).await;
    assert_eq!(code, 200);
    assert_eq!(body["strategy"], "jwt");
    assert_eq!(body["identifier"], tenant.as_str());
    // Counted under the claim: a POST with the token uses its quota.
    let r = app
        .client
        .post(app.url("/api/resource"))
        .bearer_auth(hs256(claims(json!({})), SECRET, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "19");

    let bad = [
        (
            "expired",
            hs256(claims(json!({"exp": now() - 10})), SECRET, None),
        ),
        (
            "not yet valid",
            hs256(claims(json!({"nbf": now() + 600})), SECRET, None),
        ),
        (
            "wrong signature",
            hs256(claims(json!({})), "another-secret-entirely-0123456", None),
        ),
        (
            "wrong audience",
            hs256(claims(json!({"aud": "other"})), SECRET, None),
        ),
        (
            "wrong issuer",
            hs256(claims(json!({"iss": "https://evil.test"})), SECRET, None),
        ),
        (
            "missing claim",
            hs256(
                json!({"aud": "api", "iss": "https://issuer.test", "exp": now() + 600}),
                SECRET,
                None,
            ),
        ),
        ("not a token", "not.a.token".to_owned()),
    ];
    for (what, token) in bad {
        let (code, body) = status(&app, &token).await;
        assert_eq!(code, 401, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}");
        assert!(
            !body.to_string().contains(&tenant),
            "{what}: the claim is never echoed: {body}"
        );
    }
    // Without a token the caller is identified as before.
    let r = app.get("/rate-limit/status").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["strategy"], "ip");
}

#[tokio::test]
async fn es256_public_keys_and_jwks_files_verify_tokens() {
    let dir = TempDir::new("jwt-keys");
    let redis = RedisServer::start().await;
    let (app, key) = public_key_app(
        &redis,
        &dir,
        &["EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        EncodingKey::from_ec_pem,
    )
    .await;
    let subject = unique_key("es256");
    let token = sign(
        Algorithm::ES256,
        &key,
        json!({"sub": subject, "exp": now() + 600}),
    );
    let (code, body) = status(&app, &token).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["identifier"], subject.as_str());
    // An HS256 token cannot pass for one signed by the EC key.
    let forged = hs256(json!({"sub": subject, "exp": now() + 600}), SECRET, None);
    assert_eq!(status(&app, &forged).await.0, 401);

    // A JWKS document: the key is chosen by the token's kid.
    let jwks = dir.path().join("jwks.json");
    let k = base64_url(SECRET.as_bytes());
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": k}]}).to_string(),
    )
    .unwrap();
    let app = spawn_app(
        &redis,
        &[
            ("JWT_CLAIM", "sub"),
            ("JWT_JWKS_FILE", jwks.to_str().unwrap()),
        ],
    )
    .await;
    let good = hs256(
        json!({"sub": subject, "exp": now() + 600}),
        SECRET,
        Some("k1"),
    );
    assert_eq!(status(&app, &good).await.0, 200);
    let unknown_kid = hs256(
        json!({"sub": subject, "exp": now() + 600}),
        SECRET,
        Some("k9"),
    );
    assert_eq!(status(&app, &unknown_kid).await.0, 401);

    // Keys rotated: the file is reread and the new key applies, the old one
    // no longer does, without a restart.
    let rotated = "a-rotated-secret-0123456789-abcdefgh";
    let new_jwks = json!({"keys": [{
        "kty": "oct", "kid": "k2", "alg": "HS256", "k": base64_url(rotated.as_bytes())
    }]});
    std::fs::write(&jwks, new_jwks.to_string()).unwrap();
    let new = hs256(
        json!({"sub": subject, "exp": now() + 600}),
        rotated,
        Some("k2"),
    );
    eventually("the rotated JWKS applies", || async {
        status(&app, &new).await.0 == 200
    })
    .await;
    assert_eq!(status(&app, &good).await.0, 401, "the retired key");
}

/// Base64url without padding (RFC 7515), for the JWK's `k`.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn rs256_public_keys_verify_tokens() {
    let dir = TempDir::new("jwt-rsa");
    let redis = RedisServer::start().await;
    let (app, key) = public_key_app(
        &redis,
        &dir,
        &["RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        EncodingKey::from_rsa_pem,
    )
    .await;
    let subject = unique_key("rs256");
    let token = sign(
        Algorithm::RS256,
        &key,
        json!({"sub": subject, "exp": now() + 600}),
    );
    let (code, body) = status(&app, &token).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["identifier"], subject.as_str());
    let expired = sign(
        Algorithm::RS256,
        &key,
        json!({"sub": subject, "exp": now() - 10}),
    );
    assert_eq!(status(&app, &expired).await.0, 401);
}

/// Regression (issue 19, item 4): a JWT subject and an API key with the
/// same value were one identity: three token-less requests with
/// `X-API-Key: tenant-acme` locked out the JWT tenant `tenant-acme`, and an
/// allow-listing given to the tenant let anyone sending that value as an
/// API key through. Verified identities have a namespace of their own.
#[tokio::test]
async fn a_jwt_subject_and_an_api_key_of_the_same_value_are_two_callers() {
    let redis = RedisServer::start().await;
    let token_admin = "an-admin-token-of-32-characters!";
    let app = spawn_app(
        &redis,
        &[
            ("JWT_CLAIM", "tenant"),
            ("JWT_SECRET", SECRET),
            ("RATE_LIMIT_USER_LIMIT", "3"),
            ("ADMIN_TOKEN", token_admin),
        ],
    )
    .await;
    let tenant = unique_key("tenant-acme");
    let token = hs256(json!({"tenant": tenant, "exp": now() + 600}), SECRET, None);
    let with_key = || app.post_resource(Some(&tenant));
    let with_token = || {
        app.client
            .post(app.url("/api/resource"))
            .bearer_auth(&token)
            .send()
    };
    let mut keyed = Vec::new();
    for _ in 0..4 {
        keyed.push(with_key().await.status().as_u16());
    }
    assert_eq!(keyed, [200, 200, 200, 429]);
    assert_eq!(
        with_token().await.unwrap().status(),
        200,
        "the tenant is not locked out"
    );

    // An allow-listing of the JWT tenant is not the API key's.
    let r = app
        .admin(
            token_admin,
            reqwest::Method::PUT,
            &format!("/admin/overrides/jwt/{tenant}"),
        )
        .json(&json!({"unlimited": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    eventually("the override is in force", || async {
        let mut ok = true;
        for _ in 0..5 {
            ok &= with_token().await.unwrap().status() == 200;
        }
        ok
    })
    .await;
    assert_eq!(with_key().await.status(), 429, "the API key stays limited");
    // The admin API names them apart.
    let r = app
        .admin(
            token_admin,
            reqwest::Method::GET,
            &format!("/admin/identities/jwt/{tenant}"),
        )
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["strategy"], "jwt");
    assert_eq!(body["status"], "unlimited");
}

/// Regression (issue 19, item 16): a numeric claim 42 and a string "42"
/// were one identity, and claims with bidi or zero-width characters were
/// accepted. Only a plain string identifies a caller; anything else is 401.
#[tokio::test]
async fn only_plain_string_claims_identify_a_caller() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("JWT_CLAIM", "sub"), ("JWT_SECRET", SECRET)]).await;
    let token = |sub: Value| hs256(json!({"sub": sub, "exp": now() + 600}), SECRET, None);
    let (code, body) = status(&app, &token(json!("42"))).await;
    assert_eq!((code, body["strategy"].as_str()), (200, Some("jwt")));
    for sub in [
        json!(42),
        json!("ac\u{202E}me"),
        json!("ac\u{200B}me"),
        json!(["a"]),
    ] {
        let (code, _) = status(&app, &token(sub.clone())).await;
        assert_eq!(code, 401, "{sub}");
    }
}
