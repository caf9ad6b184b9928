//! Encryption at rest and token hashing, both keyed by the master key file.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

/// Fills a buffer from the OS's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

/// Lowercase hex of `bytes`: token ids and secrets, incarnations, job ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes that are wiped when dropped, with `explicit_bzero` (a `memset` the compiler may not
/// remove): zeroize's byte-by-byte volatile writes cost more than the rest of a 4 KiB read's
/// answer (BENCHMARKS.md). For answers that carry values.
pub struct Wiped(pub Vec<u8>);

impl std::fmt::Debug for Wiped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wiped({} bytes)", self.0.len())
    }
}

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[allow(unsafe_code)] // explicit_bzero, the one unsafe item of this crate
impl Drop for Wiped {
    fn drop(&mut self) {
        // The whole allocation, spare capacity included.
        let spare = self.0.capacity();
        // SAFETY: the pointer and capacity describe the Vec's own allocation, which it keeps
        // until after this call.
        unsafe { libc::explicit_bzero(self.0.as_mut_ptr().cast(), spare) };
    }
}

/// Refuses a key or token file that group or others may read or write: whoever could read it
/// may already have. `what` names the file in the message ("master key", "operator token").
pub fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("reading the mode of {what} '{}'", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} '{}' has mode {mode:o}; it must not be readable by group or others (chmod 600)",
            path.display()
        );
    }
    Ok(())
}

/// The keys derived from the master key. The master key itself is dropped after derivation.
pub struct Keys {
    aead: XChaCha20Poly1305,
    token_key: Zeroizing<[u8; 32]>,
    check: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(****)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a stored value failed authentication (wrong master key or tampered data)")]
pub struct OpenError;

impl Keys {
    /// Reads the master key file, creating it (mode 0600) when absent. Returns whether it was
    /// created.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(Self, bool)> {
        let (master, created) = match fs::read(path) {
            Ok(bytes) => {
                check_private(path, "master key")?;
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!("master key '{}' is not 32 bytes long", path.display())
                })?;
                (Zeroizing::new(key), false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Zeroizing::new(random_bytes::<32>());
                create_private(path, key.as_slice())
                    .with_context(|| format!("creating master key '{}'", path.display()))?;
                (key, true)
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading master key '{}'", path.display()));
            }
        };
        Ok((Self::from_master(&master), created))
    }

    pub fn from_master(master: &[u8; 32]) -> Self {
        let enc = Zeroizing::new(blake3::derive_key(
            "neuro-secrets 2026 value encryption",
            master,
        ));
        let tok = blake3::derive_key("neuro-secrets 2026 token hashing", master);
        Self {
            aead: XChaCha20Poly1305::new(enc.as_slice().into()),
            token_key: Zeroizing::new(tok),
            check: hex(&blake3::derive_key("neuro-secrets 2026 key check", master)),
        }
    }

    /// A value derived from the master key that shows whether two keys are the same without
    /// saying anything about either: stored once, compared by every replica at start.
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Encrypts `plain`, binding it to `aad` (the secret's `OWNER/KEY`): nonce ++ ciphertext.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = random_bytes::<NONCE_LEN>();
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }

    /// A keyed hash of a token's secret part: cheap enough for every request, useless to
    /// anyone who steals the database without the master key.
    pub fn token_hash(&self, secret: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.token_key, secret.as_bytes()).as_bytes()
    }
}

/// Creates `path` with `bytes`, mode 0600 whatever the umask, only if nothing is there (not
/// even a symlink: `O_CREAT|O_EXCL` follows none), and syncs it.
pub(crate) fn create_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
        assert_eq!(hex(&[]), "");
        assert_eq!(format!("{:?}", Wiped(b"secret".to_vec())), "Wiped(6 bytes)");
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = Keys::from_master(&[7; 32]);
        let s = k.seal("alice/k", b"p@$$w0rd123");
        assert!(!s.windows(11).any(|w| w == b"p@$$w0rd123"));
        assert_eq!(k.open("alice/k", &s).unwrap().as_slice(), b"p@$$w0rd123");
        assert!(k.open("bob/k", &s).is_err(), "value moved to another key");
        let other = Keys::from_master(&[8; 32]);
        assert!(other.open("alice/k", &s).is_err());
    }

    #[test]
    fn master_key_is_created_with_mode_0600_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.key");
        let (k1, created) = Keys::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = Keys::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(
            k2.open("a/b", &k1.seal("a/b", b"v")).unwrap().as_slice(),
            b"v"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Keys::load_or_create(&p).is_err());
    }

    #[test]
    fn files_open_to_group_or_others_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin.token");
        fs::write(&p, "t\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let r = check_private(&p, "operator token");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(msg.starts_with("operator token '"), "{msg}");
                assert!(
                    msg.contains(&format!("has mode {mode:o}")) && msg.contains("chmod 600"),
                    "{msg}"
                );
            }
        }
    }
}
