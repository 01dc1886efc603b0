//! Special tokens: `rgpt_` + 256 random bits in base62 (43 chars) + a 6-char base62 CRC32 checksum, GitHub-style, so secret
//! scanners recognise them and typos are rejected before any database access. Stored only as HMAC-SHA256(pepper, token),
//! under the highest pepper version of `RELIABLEGPT_TOKEN_PEPPER`; older versions are only tried when that misses.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Keyring;

pub const PREFIX: &str = "rgpt_";
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
pub const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token checksum does not match")]
    Checksum,
}

/// A syntactically valid token. Never printed: `Debug` shows only the prefix.
pub struct Token(SecretString);

/// HMAC-SHA256(pepper, token): what the database stores and looks tokens up by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.as_slice().ct_eq(other).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl Token {
    pub fn generate() -> Self {
        let mut entropy = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(entropy.as_mut());
        let mut text = String::with_capacity(TOKEN_LEN);
        text.push_str(PREFIX);
        text.push_str(&encode_base62(entropy.as_ref(), BODY_LEN));
        let checksum = crc32fast::hash(text.as_bytes());
        text.push_str(&encode_base62(&checksum.to_be_bytes(), CHECKSUM_LEN));
        Self(SecretString::from(text))
    }

    /// Checks shape and checksum only; no database access, so a mutated token costs us nothing.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        if text.len() != TOKEN_LEN || !text.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let rest = &text[PREFIX.len()..];
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::Malformed);
        }
        let (signed, checksum) = text.split_at(PREFIX.len() + BODY_LEN);
        let expected = encode_base62(&crc32fast::hash(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
        if !bool::from(expected.as_bytes().ct_eq(checksum.as_bytes())) {
            return Err(TokenError::Checksum);
        }
        Ok(Self(SecretString::from(text.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The hash under one pepper version's keyed HMAC (see [`Peppers`]).
    fn hash_with(&self, keyed: &Hmac<Sha256>) -> TokenHash {
        let mut mac = keyed.clone();
        mac.update(self.expose().as_bytes());
        TokenHash(mac.finalize().into_bytes().into())
    }
}

/// The token peppers, each keyed into an HMAC once at start (cloning the keyed state per token skips re-keying).
/// Highest version first: it is the active one.
pub struct Peppers {
    keyed: Vec<(u32, Hmac<Sha256>)>,
}

impl Peppers {
    pub fn new(ring: &Keyring) -> Self {
        let keyed = ring
            .iter()
            .map(|(version, pepper)| {
                let Ok(mac) = <Hmac<Sha256> as Mac>::new_from_slice(pepper.expose()) else {
                    unreachable!("HMAC accepts keys of every length")
                };
                (version, mac)
            })
            .collect();
        Self { keyed }
    }

    /// The hash stored for new tokens and looked up first, with its pepper version.
    pub fn active(&self, token: &Token) -> (u32, TokenHash) {
        // A keyring has at least one entry.
        let (version, keyed) = &self.keyed[0];
        (*version, token.hash_with(keyed))
    }

    /// Hashes under every older pepper version (tried only when the active hash is not found).
    pub fn older(&self, token: &Token) -> Vec<(u32, TokenHash)> {
        self.keyed[1..].iter().map(|(version, keyed)| (*version, token.hash_with(keyed))).collect()
    }
}

impl fmt::Debug for Peppers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u32> = self.keyed.iter().map(|(v, _)| *v).collect();
        f.debug_struct("Peppers").field("versions", &versions).finish_non_exhaustive()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({PREFIX}[REDACTED])")
    }
}

/// Big-endian base62, left-padded with '0' to a fixed width.
fn encode_base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while number.iter().any(|&b| b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            remainder = acc % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret32;

    #[test]
    fn generated_tokens_have_the_documented_shape_and_parse() {
        let t = Token::generate();
        let s = t.expose();
        assert_eq!(s.len(), TOKEN_LEN);
        assert_eq!(s.len(), 54);
        assert!(s.starts_with("rgpt_"));
        assert!(s[5..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(Token::parse(s).unwrap().expose(), s);
        assert_ne!(Token::generate().expose(), s);
    }

    #[test]
    fn every_single_character_mutation_is_rejected() {
        let t = Token::generate();
        let s = t.expose().to_owned();
        for i in PREFIX.len()..s.len() {
            for replacement in [b'0', b'z', b'Q'] {
                let mut bytes = s.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                let mutated = String::from_utf8(bytes).unwrap();
                assert!(Token::parse(&mutated).is_err(), "mutation at {i} accepted");
            }
        }
    }

    #[test]
    fn malformed_inputs() {
        let good = Token::generate().expose().to_owned();
        for bad in [
            String::new(),
            "rgpt_".into(),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            good.replacen("rgpt_", "rgpx_", 1),
            format!("rgpt_{}", "é".repeat(24)),
            good.replacen(&good[10..11], "-", 1),
        ] {
            assert!(Token::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn base62_is_fixed_width_and_injective_on_edges() {
        assert_eq!(encode_base62(&[0; 32], 43), "0".repeat(43));
        assert_eq!(encode_base62(&[0xff; 32], 43).len(), 43);
        assert_eq!(encode_base62(&[0, 0, 0, 61], 6), "00000z");
        assert_eq!(encode_base62(&[0, 0, 0, 62], 6), "000010");
        assert_eq!(encode_base62(&u32::MAX.to_be_bytes(), 6), "4gfFC3");
    }

    fn peppers(keys: &[(u32, u8)]) -> Peppers {
        Peppers::new(&Keyring::from_keys(keys.iter().map(|(v, b)| (*v, Secret32::new([*b; 32]))).collect()).unwrap())
    }

    #[test]
    fn hash_depends_on_pepper_and_compares_in_constant_time() {
        let t = Token::generate();
        let h1 = peppers(&[(1, 1)]).active(&t).1;
        let h2 = peppers(&[(1, 2)]).active(&t).1;
        assert_ne!(h1, h2);
        assert!(h1.ct_eq(&h1.0));
        assert!(!h1.ct_eq(&h2.0));
        assert!(!h1.ct_eq(&h1.0[..31]));
        // The keyed-once HMAC gives the plain HMAC-SHA256(pepper, token).
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
        plain.update(t.expose().as_bytes());
        assert_eq!(h1.0.as_slice(), plain.finalize().into_bytes().as_slice());
    }

    #[test]
    fn the_highest_pepper_version_is_active_and_older_ones_follow() {
        let t = Token::generate();
        let ring = peppers(&[(2, 2), (7, 7), (1, 1)]);
        assert_eq!(ring.active(&t), (7, peppers(&[(1, 7)]).active(&t).1));
        let older: Vec<u32> = ring.older(&t).iter().map(|(v, _)| *v).collect();
        assert_eq!(older, vec![2, 1]);
        assert_eq!(ring.older(&t)[1].1, peppers(&[(1, 1)]).active(&t).1);
        assert!(peppers(&[(1, 1)]).older(&t).is_empty());
        assert!(!format!("{ring:?}").contains("[7, 7"));
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::generate();
        let debug = format!("{t:?} {:?}", peppers(&[(1, 0)]).active(&t).1);
        assert!(!debug.contains(&t.expose()[5..]));
    }

    use proptest::prelude::{Just, Strategy as _, any, prop_oneof};

    /// A valid token built from given entropy, the way [`Token::generate`] builds one (so failures replay).
    fn token_from(entropy: &[u8; 32]) -> String {
        token_from_body(&format!("{PREFIX}{}", encode_base62(entropy, BODY_LEN)))
    }

    /// What a valid token is, spelled out independently of `parse`'s code path.
    fn is_valid(text: &str) -> bool {
        text.len() == TOKEN_LEN
            && text.is_ascii()
            && text.starts_with(PREFIX)
            && text[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric())
            && token_from_body(&text[..PREFIX.len() + BODY_LEN]) == text
    }

    fn token_from_body(signed: &str) -> String {
        let checksum = encode_base62(&crc32fast::hash(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
        format!("{signed}{checksum}")
    }

    /// One edit of a token: replace, insert or delete a character, or swap in another token's checksum.
    #[derive(Debug, Clone)]
    enum Edit {
        Replace(usize, char),
        Insert(usize, char),
        Delete(usize),
        Checksum([u8; 32]),
    }

    fn edit() -> impl proptest::prelude::Strategy<Value = Edit> {
        let ch = prop_oneof![
            4 => proptest::char::range('0', 'z'),
            1 => any::<char>(),
            1 => Just('é'),
        ];
        prop_oneof![
            (0..TOKEN_LEN, ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
            (0..=TOKEN_LEN, ch).prop_map(|(i, c)| Edit::Insert(i, c)),
            (0..TOKEN_LEN).prop_map(Edit::Delete),
            any::<[u8; 32]>().prop_map(Edit::Checksum),
        ]
    }

    fn apply(token: &str, edit: &Edit) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        match edit {
            Edit::Replace(i, c) => chars[*i] = *c,
            Edit::Insert(i, c) => chars.insert(*i, *c),
            Edit::Delete(i) => {
                chars.remove(*i);
            }
            Edit::Checksum(other) => {
                let other = token_from(other);
                chars.truncate(TOKEN_LEN - CHECKSUM_LEN);
                chars.extend(other[TOKEN_LEN - CHECKSUM_LEN..].chars());
            }
        }
        chars.into_iter().collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any text: no panic, and accepted exactly when it has the documented shape and checksum.
        #[test]
        fn token_parse_prop_arbitrary_text(
            text in prop_oneof![
                any::<String>(),
                "rgpt_[0-9A-Za-z]{49}",
                "rgpt_.{49}",
                "[rgpt_]{0,6}[0-9A-Za-z\u{e9}\u{1F600}]{0,60}",
                ("[ -~\u{e9}]{1,4}", 1usize..40_000).prop_map(|(s, n)| s.repeat(n)),
            ]
        ) {
            let parsed = Token::parse(&text);
            proptest::prop_assert_eq!(parsed.is_ok(), is_valid(&text));
            if let Ok(token) = parsed {
                proptest::prop_assert_eq!(token.expose(), text.as_str());
            }
        }

        /// A valid token parses back to itself; one edit of it is refused unless the edit changed nothing.
        #[test]
        fn token_parse_prop_mutations_are_refused(entropy in any::<[u8; 32]>(), edit in edit()) {
            let token = token_from(&entropy);
            proptest::prop_assert_eq!(Token::parse(&token).map(|t| t.expose().to_owned()), Ok(token.clone()));
            let mutated = apply(&token, &edit);
            if mutated == token {
                proptest::prop_assert!(Token::parse(&mutated).is_ok());
            } else {
                proptest::prop_assert!(Token::parse(&mutated).is_err(), "{:?} accepted {}", edit, mutated);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// generate → parse round trip (generate draws its own entropy; the case count bounds the draws).
        #[test]
        fn token_parse_prop_generate_round_trips(_case in 0u8..1) {
            let token = Token::generate();
            proptest::prop_assert!(is_valid(token.expose()));
            let parsed = Token::parse(token.expose());
            proptest::prop_assert_eq!(parsed.map(|t| t.expose().to_owned()), Ok(token.expose().to_owned()));
        }
    }
}
