//! Who may do what (DESIGN §7): static bearer tokens and HS256 JWTs carrying a role
//! (`reader` < `writer` < `admin`), optionally limited to some barrels. With no credential
//! configured the API is open (the node then listens on loopback only, or was told
//! `--insecure`).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{ApiError, AppState};
use crate::config::{AuthConfig, Role};

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// What it may do.
    pub role: Role,
    /// The barrels it may touch; all when `None`.
    pub barrels: Option<Vec<String>>,
}

impl Principal {
    /// Whether this principal holds `need` on `barrel` (or node-wide for `None`).
    pub fn may(&self, need: Role, barrel: Option<&str>) -> bool {
        self.role >= need
            && match (&self.barrels, barrel) {
                (None, _) => true,
                (Some(list), Some(b)) => list.iter().any(|x| x == b),
                // A barrel-scoped credential may only list barrels and read node info.
                (Some(_), None) => need == Role::Reader,
            }
    }
}

/// The configured credentials.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    role: Role,
    #[serde(default)]
    barrels: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
}

impl Auth {
    /// Credentials from the configuration.
    pub fn new(config: AuthConfig) -> Self {
        Self { config }
    }

    /// Whether requests must carry a credential.
    pub fn enabled(&self) -> bool {
        self.config.enabled()
    }

    /// The principal of a bearer token: a configured token or a valid JWT.
    pub fn principal(&self, token: &str) -> Result<Principal, ApiError> {
        for t in &self.config.tokens {
            if constant_time_eq(t.token.as_bytes(), token.as_bytes()) {
                return Ok(Principal {
                    role: t.role,
                    barrels: t.barrels.clone(),
                });
            }
        }
        if let Some(secret) = &self.config.jwt_hs256_secret {
            if token.matches('.').count() == 2 {
                return verify_jwt(secret.as_bytes(), token, now_secs());
            }
        }
        Err(ApiError::unauthorized("unknown token"))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies an HS256 JWT and reads its claims.
pub fn verify_jwt(secret: &[u8], token: &str, now: u64) -> Result<Principal, ApiError> {
    let bad = |why: &str| ApiError::unauthorized(format!("invalid token: {why}"));
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT"));
    };
    let header: JwtHeader = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("unreadable header"))?;
    if header.alg != "HS256" {
        return Err(bad("only HS256 is accepted"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad("unreadable signature"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| bad("bad secret"))?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| bad("signature does not match"))?;
    let claims: JwtClaims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("claims need a role of reader, writer or admin"))?;
    if claims.exp.is_some_and(|exp| now >= exp) {
        return Err(bad("expired"));
    }
    if claims.nbf.is_some_and(|nbf| now < nbf) {
        return Err(bad("not valid yet"));
    }
    Ok(Principal {
        role: claims.role,
        barrels: claims.barrels,
    })
}

/// Signs claims as an HS256 JWT (for tests, tools and the CLI).
pub fn sign_jwt(secret: &[u8], claims: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

/// The role a request needs and the barrel it touches, from its method and path.
/// `None` for routes open to everyone.
pub fn requirement(method: &Method, path: &str) -> Option<(Role, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match segs.as_slice() {
        // GraphQL checks each field itself: a query needs reader, a mutation writer or admin.
        [""] | ["health"] | ["openapi.json"] | ["graphql", ..] => None,
        ["metrics"] | ["replicate"] | ["replications", ..] => Some((Role::Admin, None)),
        ["barrels", b] => Some((
            if read { Role::Reader } else { Role::Admin },
            Some((*b).to_owned()),
        )),
        ["barrels", b, ..] => Some((
            if read { Role::Reader } else { Role::Writer },
            Some((*b).to_owned()),
        )),
        _ if read => Some((Role::Reader, None)),
        _ => Some((Role::Admin, None)),
    }
}

/// Middleware: 401 without a valid credential, 403 without the right, when auth is on.
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    if let Some(state) = state.filter(|s| s.auth.enabled()) {
        if let Some((need, barrel)) = requirement(req.method(), req.path()) {
            let header = req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let token = match header {
                None => return Err(ApiError::unauthorized("this node needs a bearer token").into()),
                Some(h) => h
                    .strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
                    .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?
                    .trim(),
            };
            let principal = state.auth.principal(token)?;
            if !principal.may(need, barrel.as_deref()) {
                let what = barrel.map_or_else(String::new, |b| format!(" on barrel {b:?}"));
                return Err(ApiError::forbidden(format!(
                    "this needs the {need:?} role{what}",
                    need = need
                ))
                .into());
            }
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwts_are_verified() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let t = sign_jwt(
            secret,
            &json!({"role": "writer", "barrels": ["a"], "exp": 2_000}),
        );
        let p = verify_jwt(secret, &t, 1_000).unwrap();
        assert_eq!(
            p,
            Principal {
                role: Role::Writer,
                barrels: Some(vec!["a".into()])
            }
        );
        assert!(verify_jwt(secret, &t, 2_000).is_err(), "expired");
        assert!(verify_jwt(b"another secret of 32 bytes......", &t, 1_000).is_err());
        let tampered = t.replacen('.', ".e30", 1);
        assert!(verify_jwt(secret, &tampered, 1_000).is_err());
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"role":"admin"}"#)
        );
        assert!(verify_jwt(secret, &none_alg, 1_000).is_err());
        let no_role = sign_jwt(secret, &json!({"sub": "x"}));
        assert!(verify_jwt(secret, &no_role, 1_000).is_err());
    }

    #[test]
    fn requirements_follow_method_and_path() {
        assert_eq!(requirement(&Method::GET, "/health"), None);
        assert_eq!(
            requirement(&Method::GET, "/barrels/a/docs/x"),
            Some((Role::Reader, Some("a".into())))
        );
        assert_eq!(
            requirement(&Method::PUT, "/barrels/a/docs/x"),
            Some((Role::Writer, Some("a".into())))
        );
        assert_eq!(
            requirement(&Method::PUT, "/barrels/a"),
            Some((Role::Admin, Some("a".into())))
        );
        assert_eq!(
            requirement(&Method::GET, "/metrics"),
            Some((Role::Admin, None))
        );
        let scoped = Principal {
            role: Role::Admin,
            barrels: Some(vec!["a".into()]),
        };
        assert!(scoped.may(Role::Writer, Some("a")));
        assert!(!scoped.may(Role::Reader, Some("b")));
        assert!(!scoped.may(Role::Admin, None));
    }
}
