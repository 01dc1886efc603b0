//! Scoped tokens: short-lived JWTs minted from a special token with a narrower right, e.g. reading one customer
//! instance's cache from an app front end that must not hold the special token.
//!
//! HS256 only, signed with a key derived (HKDF) from the master key; the header's `kid` names the master key version so
//! rotation keeps recent tokens valid while the old version stays in the keyring. `iss`, `aud`, `sub`, `jti`, `exp`
//! and `nbf` are required; `exp` is at most 24 h after `iat`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::derive_purpose_key;
use crate::config::MasterKeyring;

pub const ISSUER: &str = "reliablegpt";
pub const AUDIENCE: &str = "reliablegpt-cache";
/// The one scope there is today.
pub const CACHE_READ: &str = "cache:read";
pub const MAX_TTL_SECONDS: u32 = 24 * 60 * 60;
pub const DEFAULT_TTL_SECONDS: u32 = 15 * 60;
const SIGNING_KEY_PURPOSE: &[u8] = b"reliablegpt/v1/scoped-jwt-hs256";
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: Uuid,
    jti: Uuid,
    iat: i64,
    nbf: i64,
    exp: i64,
    scope: String,
    instance_id: String,
}

/// What a valid scoped token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub key_set_id: Uuid,
    pub instance_id: String,
}

/// Signs and checks scoped tokens with keys derived from each master key version.
pub struct ScopedTokens {
    active: (u32, EncodingKey),
    verify: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for ScopedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScopedTokens([REDACTED])")
    }
}

fn kid(version: u32) -> String {
    format!("v{version}")
}

impl ScopedTokens {
    pub fn new(keyring: &MasterKeyring) -> Result<Self, jsonwebtoken::errors::Error> {
        let derive = |master: &crate::config::Secret32| derive_purpose_key(master.expose(), SIGNING_KEY_PURPOSE);
        let (active_version, active_master) = keyring.active();
        let active_key = EncodingKey::from_secret(derive(active_master).as_slice())?;
        let mut verify = HashMap::new();
        for version in keyring.versions() {
            if let Some(master) = keyring.get(version) {
                verify.insert(kid(version), DecodingKey::from_secret(derive(master).as_slice())?);
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Ok(Self { active: (active_version, active_key), verify, validation })
    }

    /// A `cache:read` token for one instance, valid for `ttl_seconds` (1..=24 h).
    pub fn mint(&self, key_set_id: Uuid, instance_id: &str, ttl_seconds: u32) -> (String, DateTime<Utc>) {
        let now = Utc::now();
        let expires = now + chrono::Duration::seconds(i64::from(ttl_seconds.clamp(1, MAX_TTL_SECONDS)));
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: key_set_id,
            jti: Uuid::new_v4(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: expires.timestamp(),
            scope: CACHE_READ.into(),
            instance_id: instance_id.into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid(self.active.0));
        // HS256 over serialisable claims cannot fail; an empty token would simply never verify.
        let token = jsonwebtoken::encode(&header, &claims, &self.active.1).unwrap_or_default();
        (token, expires)
    }

    /// The scope of a valid token, or `None` for anything else (bad signature or algorithm, expired, not yet valid,
    /// wrong issuer or audience, missing claims, unknown key version, a scope other than `cache:read`, a lifetime over
    /// 24 h).
    pub fn verify(&self, token: &str) -> Option<Scope> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::HS256 {
            return None;
        }
        let key = self.verify.get(header.kid.as_deref()?)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?.claims;
        let lifetime = claims.exp.checked_sub(claims.iat)?;
        if claims.scope != CACHE_READ || !(0..=i64::from(MAX_TTL_SECONDS)).contains(&lifetime) {
            return None;
        }
        Some(Scope { key_set_id: claims.sub, instance_id: claims.instance_id })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::{Hmac, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;

    use super::*;
    use crate::config::Secret32;

    fn keyring(seed: u8) -> MasterKeyring {
        MasterKeyring::from_keys(vec![(1, Secret32::new([seed; 32]))]).unwrap()
    }

    fn signing_key(seed: u8) -> zeroize::Zeroizing<[u8; 32]> {
        derive_purpose_key(&[seed; 32], SIGNING_KEY_PURPOSE)
    }

    /// A token built by hand, so that every field (and the algorithm) can be wrong.
    fn forge(header: Value, claims: Value, key: &[u8]) -> String {
        let head = B64.encode(header.to_string());
        let body = B64.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn good_claims() -> Value {
        let now = Utc::now().timestamp();
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": Uuid::nil(), "jti": Uuid::new_v4(), "iat": now, "nbf": now,
               "exp": now + 600, "scope": CACHE_READ, "instance_id": "shop-1"})
    }

    fn with(mut claims: Value, field: &str, value: Value) -> Value {
        claims[field] = value;
        claims
    }

    fn without(mut claims: Value, field: &str) -> Value {
        claims.as_object_mut().unwrap().remove(field);
        claims
    }

    #[test]
    fn a_minted_token_verifies_for_its_instance_only() {
        let tokens = ScopedTokens::new(&keyring(1)).unwrap();
        let set = Uuid::new_v4();
        let (token, expires) = tokens.mint(set, "shop-1", 900);
        assert!(expires > Utc::now() + chrono::Duration::seconds(890));
        assert_eq!(tokens.verify(&token), Some(Scope { key_set_id: set, instance_id: "shop-1".into() }));
        // The forge helper itself produces tokens that verify, so every rejection below is about the one change.
        let hs = json!({"alg": "HS256", "typ": "JWT", "kid": "v1"});
        assert!(tokens.verify(&forge(hs, good_claims(), signing_key(1).as_slice())).is_some());
        // Another master key does not accept it.
        assert_eq!(ScopedTokens::new(&keyring(2)).unwrap().verify(&token), None);
    }

    #[test]
    fn rejects_every_malformed_or_forged_token() {
        let tokens = ScopedTokens::new(&keyring(1)).unwrap();
        let key = signing_key(1);
        let hs = json!({"alg": "HS256", "typ": "JWT", "kid": "v1"});
        let now = Utc::now().timestamp();
        let none_token = format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none", "typ": "JWT", "kid": "v1"}).to_string()),
            B64.encode(good_claims().to_string())
        );
        let cases: Vec<(&str, String)> = vec![
            ("alg none", none_token),
            ("wrong key", forge(hs.clone(), good_claims(), signing_key(9).as_slice())),
            ("HS384 header", forge(json!({"alg": "HS384", "typ": "JWT", "kid": "v1"}), good_claims(), key.as_slice())),
            ("RS256 header", forge(json!({"alg": "RS256", "typ": "JWT", "kid": "v1"}), good_claims(), key.as_slice())),
            ("unknown kid", forge(json!({"alg": "HS256", "kid": "v7"}), good_claims(), key.as_slice())),
            ("no kid", forge(json!({"alg": "HS256"}), good_claims(), key.as_slice())),
            ("expired", forge(hs.clone(), with(good_claims(), "exp", json!(now - 60)), key.as_slice())),
            ("future nbf", forge(hs.clone(), with(good_claims(), "nbf", json!(now + 600)), key.as_slice())),
            (
                "string exp",
                forge(hs.clone(), with(good_claims(), "exp", json!((now + 600).to_string())), key.as_slice()),
            ),
            ("string nbf", forge(hs.clone(), with(good_claims(), "nbf", json!(now.to_string())), key.as_slice())),
            ("no exp", forge(hs.clone(), without(good_claims(), "exp"), key.as_slice())),
            ("no nbf", forge(hs.clone(), without(good_claims(), "nbf"), key.as_slice())),
            ("no aud", forge(hs.clone(), without(good_claims(), "aud"), key.as_slice())),
            ("no iss", forge(hs.clone(), without(good_claims(), "iss"), key.as_slice())),
            ("no sub", forge(hs.clone(), without(good_claims(), "sub"), key.as_slice())),
            ("no jti", forge(hs.clone(), without(good_claims(), "jti"), key.as_slice())),
            ("wrong aud", forge(hs.clone(), with(good_claims(), "aud", json!("someone-else")), key.as_slice())),
            ("wrong iss", forge(hs.clone(), with(good_claims(), "iss", json!("evil")), key.as_slice())),
            ("wrong scope", forge(hs.clone(), with(good_claims(), "scope", json!("keys:write")), key.as_slice())),
            ("over 24 h", forge(hs.clone(), with(good_claims(), "exp", json!(now + 25 * 3600)), key.as_slice())),
            ("garbage", "not.a.jwt".into()),
            ("empty", String::new()),
        ];
        for (name, token) in cases {
            assert_eq!(tokens.verify(&token), None, "{name} was accepted");
        }
        // A flipped signature byte.
        let (token, _) = tokens.mint(Uuid::nil(), "shop-1", 60);
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(tokens.verify(&String::from_utf8(bytes).unwrap()), None);
    }

    #[test]
    fn old_master_key_versions_still_verify_after_rotation() {
        let old = ScopedTokens::new(&keyring(1)).unwrap();
        let (token, _) = old.mint(Uuid::nil(), "a", 60);
        let rotated = MasterKeyring::from_keys(vec![(1, Secret32::new([1; 32])), (2, Secret32::new([2; 32]))]).unwrap();
        let rotated = ScopedTokens::new(&rotated).unwrap();
        assert!(rotated.verify(&token).is_some());
        let (fresh, _) = rotated.mint(Uuid::nil(), "a", 60);
        assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(), Some("v2"));
        assert_eq!(old.verify(&fresh), None);
        assert_eq!(format!("{rotated:?}"), "ScopedTokens([REDACTED])");
    }

    use proptest::prelude::{Just, Strategy as _, any, prop_oneof};

    fn segment() -> impl proptest::prelude::Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9_-]{0,60}",
            proptest::collection::vec(any::<u8>(), 0..60).prop_map(|b| B64.encode(b)),
            "[ -~]{0,20}".prop_map(|json| B64.encode(json)),
            Just(B64.encode(json!({"alg": "HS256", "kid": "v1"}).to_string())),
            Just(B64.encode(json!({"alg": "none", "kid": "v1"}).to_string())),
            Just(B64.encode(good_claims().to_string())),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Arbitrary text, and three arbitrary dot-separated segments (some well-formed headers and claims without a
        /// valid signature), never verify and never panic.
        #[test]
        fn scoped_verify_prop_arbitrary_text(
            text in prop_oneof![
                any::<String>(),
                (segment(), segment(), segment()).prop_map(|(h, c, s)| format!("{h}.{c}.{s}")),
                ("[A-Za-z0-9_.=-]{0,4}", 1usize..20_000).prop_map(|(s, n)| s.repeat(n)),
            ]
        ) {
            let tokens = ScopedTokens::new(&keyring(1)).unwrap();
            proptest::prop_assert_eq!(tokens.verify(&text), None);
        }

        /// One replaced, inserted or deleted character anywhere in a valid token: refused unless nothing changed.
        #[test]
        fn scoped_verify_prop_mutations(
            at in any::<usize>(),
            op in 0u8..3,
            ch in prop_oneof![4 => proptest::char::range('-', 'z'), 1 => any::<char>()],
        ) {
            let tokens = ScopedTokens::new(&keyring(1)).unwrap();
            let (token, _) = tokens.mint(Uuid::nil(), "shop-1", 600);
            let mut chars: Vec<char> = token.chars().collect();
            let i = at % (chars.len() + usize::from(op == 1));
            match op {
                0 => chars[i] = ch,
                1 => chars.insert(i, ch),
                _ => {
                    chars.remove(i);
                }
            }
            let mutated: String = chars.into_iter().collect();
            if mutated == token {
                proptest::prop_assert!(tokens.verify(&mutated).is_some());
            } else {
                proptest::prop_assert_eq!(tokens.verify(&mutated), None, "{} verified", mutated);
            }
        }
    }
}
