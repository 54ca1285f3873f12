//! At-rest encryption of recovery-point data (undo journals) with
//! XChaCha20-Poly1305 and a 256-bit key file.
//!
//! The live replica image stays plain so a hypervisor can start it as is; every
//! block that a recovery point keeps (the undo journals) is sealed, with the block
//! index as associated data so records cannot be swapped.

use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::XChaCha20Poly1305;

use crate::error::{Result, TransportError};

/// Nonce bytes prepended to each sealed record.
pub const NONCE_LEN: usize = 24;
/// Authentication tag bytes appended by the cipher.
pub const TAG_LEN: usize = 16;

/// A repository encryption key.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
    check: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.check)
    }
}

impl Key {
    /// Loads a key file: 32 raw bytes, or 64 hex digits (whitespace ignored).
    pub fn load(path: &Path) -> Result<Key> {
        let raw = std::fs::read(path).map_err(|e| TransportError::io("reading key file", e))?;
        let text: String = String::from_utf8_lossy(&raw)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = if raw.len() == 32 {
            raw
        } else {
            hex::decode(&text).unwrap_or_default()
        };
        if bytes.len() != 32 {
            return Err(TransportError::Repository(format!(
                "key file {} must hold 32 bytes (raw or 64 hex digits)",
                path.display()
            )));
        }
        Ok(Key::from_bytes(&bytes))
    }

    /// Writes a new random key (64 hex digits, mode 0600) and returns it.
    pub fn generate(path: &Path) -> Result<Key> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let k = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| TransportError::io("creating key file", e))?;
        f.write_all(hex::encode(k).as_bytes())
            .map_err(|e| TransportError::io("writing key file", e))?;
        Ok(Key::from_bytes(&k))
    }

    fn from_bytes(b: &[u8]) -> Key {
        let check = hex::encode(&blake3::derive_key("haven repository key check v1", b)[..8]);
        Key {
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(b)),
            check,
        }
    }

    /// A public fingerprint stored in the repository to detect a wrong key.
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Encrypts `plain`, binding `aad`; returns nonce || ciphertext || tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        // Encryption with a fresh nonce and in-memory buffers cannot fail.
        out.extend(
            self.cipher
                .encrypt(&nonce, Payload { msg: plain, aad })
                .unwrap_or_default(),
        );
        out
    }

    /// Decrypts what [`Key::seal`] produced.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(TransportError::Repository("sealed record too short".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(nonce.into(), Payload { msg: ct, aad })
            .map_err(|_| {
                TransportError::Repository(
                    "undo record failed authentication (wrong key or tampered data)".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate(&dir.path().join("k")).unwrap();
        let k2 = Key::load(&dir.path().join("k")).unwrap();
        assert_eq!(k.check_value(), k2.check_value());
        let mut s = k.seal(b"7", b"secret block");
        assert_eq!(k2.open(b"7", &s).unwrap(), b"secret block");
        assert!(k2.open(b"8", &s).is_err());
        s[30] ^= 1;
        assert!(k2.open(b"7", &s).is_err());
    }
}
