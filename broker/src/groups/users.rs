//! Users and their access tokens (SPEC §3). A token is 32 random bytes shown once (as 64
//! hex digits); the broker keeps only its SHA-256 and compares hashes in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Default token lifetime: 525,600 minutes (a year).
pub const DEFAULT_TOKEN_EXPIRY_MINUTES: u64 = 525_600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u64,
    pub address: String,
    pub name: String,
    pub active: bool,
    /// SHA-256 of the current token, hex; `None` once revoked.
    pub token_hash: Option<String>,
    /// Unix seconds after which the token is refused.
    pub token_expires: u64,
    pub created: u64,
}

/// Why a login failed (logged, never told to the client beyond "not authorized").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    NoUser,
    Inactive,
    NoToken,
    Expired,
    WrongToken,
}

/// Checks an address against SPEC §3: 1–63 characters, no `/`, `+`, `#`, NUL or
/// whitespace.
pub fn validate_address(address: &str) -> Result<(), String> {
    let length = address.chars().count();
    if !(1..=63).contains(&length) {
        return Err(format!(
            "an address has 1 to 63 characters, this one has {length}"
        ));
    }
    if let Some(c) = address
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_whitespace())
    {
        return Err(format!("an address may not contain {c:?}"));
    }
    Ok(())
}

/// A new random token: (the token to show once, the hash to keep).
pub fn issue_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = hex(&bytes);
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl User {
    /// Checks a presented token (the MQTT password) at `now` (Unix s).
    pub fn check_token(&self, presented: &[u8], now: u64) -> Result<(), LoginError> {
        if !self.active {
            return Err(LoginError::Inactive);
        }
        let Some(stored) = &self.token_hash else {
            return Err(LoginError::NoToken);
        };
        // Hash whatever was presented, so that the comparison always runs over two
        // equal-length hashes and takes the same time whatever the input.
        let presented = hex(&Sha256::digest(presented));
        if !bool::from(presented.as_bytes().ct_eq(stored.as_bytes())) {
            return Err(LoginError::WrongToken);
        }
        if now >= self.token_expires {
            return Err(LoginError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_expiry_and_state() {
        let (token, hash) = issue_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, hash);
        let mut user = User {
            uid: 1,
            address: "alice".into(),
            name: String::new(),
            active: true,
            token_hash: Some(hash),
            token_expires: 100,
            created: 0,
        };
        assert_eq!(user.check_token(token.as_bytes(), 99), Ok(()));
        assert_eq!(user.check_token(b"nope", 99), Err(LoginError::WrongToken));
        assert_eq!(
            user.check_token(token.as_bytes(), 100),
            Err(LoginError::Expired)
        );
        user.active = false;
        assert_eq!(
            user.check_token(token.as_bytes(), 99),
            Err(LoginError::Inactive)
        );
        user.active = true;
        user.token_hash = None;
        assert_eq!(
            user.check_token(token.as_bytes(), 99),
            Err(LoginError::NoToken)
        );
        assert_ne!(issue_token().0, issue_token().0);
    }

    #[test]
    fn addresses() {
        assert!(validate_address("alice").is_ok());
        assert!(validate_address(&"a".repeat(63)).is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b", "a\0", "a\tb"] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
        assert!(validate_address(&"a".repeat(64)).is_err());
    }
}
