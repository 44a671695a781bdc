//! Sealing secrets at rest (AES-256-GCM): provider session data, and the
//! secrets of application keys. Sealed bytes are `nonce || ciphertext`; the
//! key comes from configuration (`--session-key`).

use aes_gcm::{
    Aes256Gcm, Key, KeyInit, Nonce,
    aead::{Aead, AeadCore, OsRng, Payload},
};

use crate::domain::ProviderSession;

const NONCE_LEN: usize = 12;

/// Encrypts provider session data before it is stored.
#[derive(Clone)]
pub struct SessionSealer {
    cipher: Aes256Gcm,
    /// False for a random per-process key: what it seals is unreadable
    /// after a restart.
    persistent: bool,
}

impl std::fmt::Debug for SessionSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSealer(<key redacted>)")
    }
}

impl SessionSealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            persistent: true,
        }
    }

    /// A sealer with a random key: sessions stay unreadable at rest but are
    /// not recoverable after a restart (nothing in the service reads them back).
    pub fn ephemeral() -> Self {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        Self {
            cipher: Aes256Gcm::new(&key),
            persistent: false,
        }
    }

    /// Whether the key outlives the process (configured, not random).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Seals `plaintext`, bound to `aad`: it opens only with the same `aad`
    /// (e.g. an application key's user key, so a sealed secret copied to
    /// another row does not open).
    pub fn seal_bytes(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| "encryption failed".to_owned())?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens what `seal_bytes` sealed with the same `aad`.
    pub fn open_bytes(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < NONCE_LEN {
            return Err("sealed value too short".into());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| "decryption failed".to_owned())
    }

    pub fn seal(&self, session: &ProviderSession) -> Result<Vec<u8>, String> {
        let plaintext = serde_json::to_vec(session).map_err(|e| e.to_string())?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_slice())
            .map_err(|_| "encryption failed".to_owned())?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<ProviderSession, String> {
        if sealed.len() < NONCE_LEN {
            return Err("sealed session too short".into());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| "decryption failed".to_owned())?;
        serde_json::from_slice(&plaintext).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_sessions_do_not_contain_the_token_and_open_again() {
        let sealer = SessionSealer::new(&[7; 32]);
        let session = ProviderSession {
            access_token: "EAAB-secret-token".into(),
            refresh_token: String::new(),
            expires_at: None,
        };
        let sealed = sealer.seal(&session).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(sealer.open(&sealed).unwrap(), session);
        assert!(SessionSealer::new(&[8; 32]).open(&sealed).is_err());
    }

    #[test]
    fn sealed_bytes_open_only_with_their_associated_data() {
        let sealer = SessionSealer::new(&[7; 32]);
        let sealed = sealer.seal_bytes(b"c2VjcmV0", b"key-a").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"c2VjcmV0"));
        assert_eq!(sealer.open_bytes(&sealed, b"key-a").unwrap(), b"c2VjcmV0");
        assert!(sealer.open_bytes(&sealed, b"key-b").is_err());
        assert!(sealer.open_bytes(&sealed[..5], b"key-a").is_err());
        assert!(sealer.is_persistent());
        assert!(!SessionSealer::ephemeral().is_persistent());
    }
}
