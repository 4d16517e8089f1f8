//! JWT verification: one configured algorithm, `exp` required, `aud` and
//! `iss` checked when configured.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chat_core::{DeviceId, Error, Result, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

/// The key that verifies tokens; it fixes the one accepted algorithm.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret (the example server's `CHAT_JWT_SECRET`).
    Hs256(Vec<u8>),
    /// RS256 with an RSA public key in PEM.
    Rs256Pem(Vec<u8>),
    /// EdDSA (Ed25519) with a public key in PEM.
    EdDsaPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            JwtKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            JwtKey::Rs256Pem(_) => f.write_str("Rs256Pem(..)"),
            JwtKey::EdDsaPem(_) => f.write_str("EdDsaPem(..)"),
        }
    }
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The key, and with it the only accepted algorithm.
    pub key: JwtKey,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Allowed clock skew for `exp`, in whole seconds: a token is accepted
    /// until `exp + leeway`, and a connection it opened is closed then.
    pub leeway: Duration,
}

impl AuthConfig {
    /// HS256 with `secret`, no `aud`/`iss` checks, 30 s leeway.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            key: JwtKey::Hs256(secret.into()),
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// The claims the server reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// `"admin"` grants the moderation API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The device id; `"default"` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user_id: UserId,
    /// Their device.
    pub device_id: DeviceId,
    /// Whether the token grants the moderation API.
    pub admin: bool,
    /// When the token expires (seconds since the epoch).
    pub expires_at: u64,
}

/// Verifies tokens with one key and one algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `config`; fails if a PEM key does not parse.
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let (key, alg) = match &config.key {
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(pem)
                    .map_err(|e| Error::invalid(format!("bad RSA public key: {e}")))?,
                Algorithm::RS256,
            ),
            JwtKey::EdDsaPem(pem) => (
                DecodingKey::from_ed_pem(pem)
                    .map_err(|e| Error::invalid(format!("bad Ed25519 public key: {e}")))?,
                Algorithm::EdDSA,
            ),
        };
        // `Validation::new` accepts exactly this algorithm: `alg: none` and
        // every other algorithm fail, whatever the token's header says.
        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { key, validation })
    }

    /// When a token that expires at `expires_at` (seconds since the epoch,
    /// its `exp`) stops verifying: `exp` plus the leeway. `None` when that
    /// is past what the system clock can represent (`exp` near `u64::MAX`):
    /// the token never expires in practice.
    pub fn valid_until(&self, expires_at: u64) -> Option<SystemTime> {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(expires_at))?
            .checked_add(Duration::from_secs(self.validation.leeway))
    }

    /// The identity a token names, or `Unauthenticated` saying why not.
    pub fn verify(&self, token: &str) -> Result<Identity> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match e.kind() {
                K::ExpiredSignature => "token expired",
                K::InvalidAlgorithm | K::InvalidAlgorithmName => "token algorithm not accepted",
                K::InvalidSignature => "token signature invalid",
                K::InvalidAudience => "token audience not accepted",
                K::InvalidIssuer => "token issuer not accepted",
                K::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                _ => "token invalid",
            };
            Error::Unauthenticated(why.to_owned())
        })?;
        let claims = data.claims;
        let user_id = UserId::new(claims.sub)
            .map_err(|_| Error::Unauthenticated("token sub is not a valid user id".to_owned()))?;
        let device_id = match claims.device {
            None => DeviceId::default_device(),
            Some(d) => DeviceId::new(d).map_err(|_| {
                Error::Unauthenticated("token device is not a valid device id".to_owned())
            })?,
        };
        Ok(Identity {
            user_id,
            device_id,
            admin: claims.role.as_deref() == Some("admin"),
            expires_at: claims.exp,
        })
    }
}

/// The connection driver verifies `authenticate` frames with the same
/// verifier as the HTTP API; a connection it opens closes when the token
/// stops verifying (`exp` plus the leeway).
impl chat_core::protocol::Authenticator for Verifier {
    fn authenticate(&self, token: &str) -> Result<chat_core::protocol::Credentials> {
        self.verify(token)
            .map(|identity| self.credentials(identity))
    }
}

impl Verifier {
    /// What the connection driver needs to know of a verified identity.
    pub fn credentials(&self, identity: Identity) -> chat_core::protocol::Credentials {
        chat_core::protocol::Credentials {
            valid_until: self.valid_until(identity.expires_at),
            user_id: identity.user_id,
            device_id: identity.device_id,
            admin: identity.admin,
        }
    }
}

/// Signs an HS256 token (the server's `token` command and `/dev/token`).
pub fn issue_hs256(secret: &[u8], user: &UserId, admin: bool, ttl: Duration) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(Error::backend)?;
    let claims = Claims {
        sub: user.to_string(),
        exp: (now + ttl).as_secs(),
        role: admin.then(|| "admin".to_owned()),
        device: None,
        aud: None,
        iss: None,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(Error::backend)
}

/// Seconds since the epoch, now.
#[cfg(test)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(alg: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn accepts_only_the_configured_algorithm() {
        let v = Verifier::new(&AuthConfig::hs256("s3cret")).unwrap();
        let exp = unix_now() + 600;
        let good = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            b"s3cret",
        );
        assert_eq!(v.verify(&good).unwrap().user_id.as_str(), "alice");
        let hs512 = token(
            Algorithm::HS512,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            b"s3cret",
        );
        assert!(v.verify(&hs512).is_err());
        let wrong_key = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            b"other",
        );
        assert!(v.verify(&wrong_key).is_err());
        // alg: none, hand-made
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(v.verify(none).is_err());
        let expired = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice", "exp": 1000}),
            b"s3cret",
        );
        assert!(
            matches!(v.verify(&expired), Err(Error::Unauthenticated(m)) if m.contains("expired"))
        );
        let no_exp = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice"}),
            b"s3cret",
        );
        assert!(v.verify(&no_exp).is_err());
        let bad_sub = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "a b", "exp": exp}),
            b"s3cret",
        );
        assert!(v.verify(&bad_sub).is_err());
    }

    #[test]
    fn valid_until_adds_the_leeway_and_never_overflows() {
        let v = Verifier::new(&AuthConfig::hs256("k")).unwrap();
        assert_eq!(
            v.valid_until(1_000),
            Some(UNIX_EPOCH + Duration::from_secs(1_030))
        );
        assert_eq!(v.valid_until(u64::MAX), None);
        // Within the leeway: accepted, and valid until exp + 30 s.
        let exp = unix_now() - 10;
        let t = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            b"k",
        );
        let id = v.verify(&t).unwrap();
        assert!(v.valid_until(id.expires_at).unwrap() > SystemTime::now());
        // The far future verifies, without a timer.
        let t = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "alice", "exp": u64::MAX}),
            b"k",
        );
        assert_eq!(v.verify(&t).unwrap().expires_at, u64::MAX);
    }

    #[test]
    fn audience_issuer_role_and_device() {
        let mut config = AuthConfig::hs256("k");
        config.audience = Some("chat".into());
        config.issuer = Some("app".into());
        let v = Verifier::new(&config).unwrap();
        let exp = unix_now() + 600;
        let ok = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "root", "exp": exp, "aud": "chat", "iss": "app", "role": "admin", "device": "ipad"}),
            b"k",
        );
        let id = v.verify(&ok).unwrap();
        assert!(id.admin);
        assert_eq!(id.device_id.as_str(), "ipad");
        let wrong_aud = token(
            Algorithm::HS256,
            &serde_json::json!({"sub": "root", "exp": exp, "aud": "x", "iss": "app"}),
            b"k",
        );
        assert!(v.verify(&wrong_aud).is_err());
        let issued = issue_hs256(
            b"k",
            &UserId::new("bob").unwrap(),
            false,
            Duration::from_secs(60),
        )
        .unwrap();
        let plain = Verifier::new(&AuthConfig::hs256("k")).unwrap();
        assert_eq!(plain.verify(&issued).unwrap().device_id.as_str(), "default");
    }
}
