//! The service's Ed25519 key for certificates of erasure, with ring (the TLS stack's own
//! cryptography: no second implementation linked in).

use base64::Engine;
use dsr_domain::erasure::certificate::CertificateSigner;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The local stack's key and the unit tests': not secret, it signs only what they certify.
/// Its public key, `nTMCcgnOnBMB5ap7qjSfVNtuHvDwM_SosXb8Qic3BTw` (base64url), is in the README.
pub const LOCAL_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINl+Xz6TxmFlgiiSW6CR2hyOwAg130xgqMhX5cLRUtep\n-----END PRIVATE KEY-----\n";

/// The key, from the PKCS#8 PEM that `openssl genpkey -algorithm ed25519` writes.
pub struct Ed25519Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("public_key", &hex_of(self.key.public_key().as_ref()))
            .finish()
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Ed25519Signer {
    /// Reads a `-----BEGIN PRIVATE KEY-----` PEM block. The error never repeats the key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|line| *line != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|line| *line != "-----END PRIVATE KEY-----")
            .collect();
        if body.is_empty() {
            return Err("not a PEM private key (-----BEGIN PRIVATE KEY-----)".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "the PEM body is not base64".to_owned())?;
        // OpenSSL writes PKCS#8 v1 (no public key inside): ring derives the public key.
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        Ok(Self { key })
    }
}

impl CertificateSigner for Ed25519Signer {
    fn public_key(&self) -> [u8; 32] {
        let mut public = [0; 32];
        public.copy_from_slice(self.key.public_key().as_ref());
        public
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openssl_key_signs_and_its_public_key_is_the_one_openssl_derives() {
        let signer = Ed25519Signer::from_pem(LOCAL_KEY_PEM).unwrap();
        // `openssl pkey -pubout` of the same key: its last 32 bytes.
        let spki = base64::engine::general_purpose::STANDARD
            .decode("MCowBQYDK2VwAyEAnTMCcgnOnBMB5ap7qjSfVNtuHvDwM/SosXb8Qic3BTw=")
            .unwrap();
        assert_eq!(signer.public_key().as_slice(), &spki[12..]);
        let signature = signer.sign(b"erased");
        let public =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, signer.public_key());
        assert!(public.verify(b"erased", &signature).is_ok());
        assert!(public.verify(b"erasee", &signature).is_err());
    }

    #[test]
    fn what_is_not_an_ed25519_key_is_refused_without_repeating_it() {
        for bad in [
            "",
            "secret",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----",
        ] {
            let err = Ed25519Signer::from_pem(bad).unwrap_err();
            assert!(!err.contains("c2VjcmV0") && !err.contains("!!!"), "{err}");
        }
    }
}
