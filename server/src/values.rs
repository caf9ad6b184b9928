//! The cache of opened values: a secret read does not decrypt and base64-encode a value it
//! opened moments ago.
//!
//! Decrypting (XChaCha20-Poly1305) and encoding a 4 KiB value were a fifth of a secret read's
//! CPU time (BENCHMARKS.md). An entry holds a value's plaintext and base64 under its store
//! key, with the version and the sealed bytes' nonce and tag it was opened from; a read
//! still reads the store first (so a deleted or rewritten secret is never answered from
//! here, on any replica) and uses the entry only when the stored seal is the one it was
//! made from. Entries serve reads for `TTL` after they were opened; a sweeper zeroizes and
//! drops older ones within `TTL / 6`, and writes and deletes through this process drop
//! theirs at once. The cache holds at most `capacity` bytes of plaintext and base64;
//! inserting beyond drops expired entries, then everything. `--value-cache 0` turns it off.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use secrets_core::SecretBytes;
use zeroize::Zeroizing;

/// How long an opened value may stay in memory after it was opened.
pub const TTL: Duration = Duration::from_secs(30);
/// The default bound on the bytes held (`secretd --value-cache`, in MiB).
pub const DEFAULT_MIB: u64 = 64;
/// What identifies a sealed value: its random 24-byte nonce and 16-byte tag.
const STAMP: usize = 40;

/// One opened value.
pub struct Opened {
    pub version: u64,
    pub plain: SecretBytes,
    pub base64: Zeroizing<String>,
    stamp: [u8; STAMP],
    at: Instant,
}

/// Names no byte of the value: its base64 is as secret as the value.
impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("version", &self.version)
            .field("bytes", &self.plain.len())
            .finish_non_exhaustive()
    }
}

impl Opened {
    fn bytes(&self) -> usize {
        self.plain.len() + self.base64.len()
    }
}

/// The stamp of `sealed` (nonce and tag); `None` for a value too short to have both.
fn stamp(sealed: &[u8]) -> Option<[u8; STAMP]> {
    if sealed.len() < STAMP {
        return None;
    }
    let mut s = [0u8; STAMP];
    s[..24].copy_from_slice(&sealed[..24]);
    s[24..].copy_from_slice(&sealed[sealed.len() - 16..]);
    Some(s)
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Arc<Opened>>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.bytes();
        }
    }

    fn sweep(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.map.retain(|_, e| {
            let keep = now.duration_since(e.at) < TTL;
            if !keep {
                *bytes -= e.bytes();
            }
            keep
        });
    }
}

/// The cache; cheap to share (`Arc`).
#[derive(Debug)]
pub struct ValueCache {
    entries: RwLock<Entries>,
    capacity: usize,
}

impl ValueCache {
    /// A cache of at most `capacity` bytes; 0 keeps nothing. Call `sweep_every` to bound how
    /// long values stay.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: RwLock::default(),
            capacity,
        })
    }

    /// The entry for `key` if it was opened from `sealed` at `version` less than `TTL` ago.
    pub fn get(&self, key: &str, version: u64, sealed: &[u8]) -> Option<Arc<Opened>> {
        if self.capacity == 0 {
            return None;
        }
        let stamp = stamp(sealed)?;
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let e = entries.map.get(key)?;
        (e.version == version && e.stamp == stamp && e.at.elapsed() < TTL).then(|| e.clone())
    }

    /// Keeps `plain`, opened from `sealed` at `version`, and returns its entry (kept or not:
    /// a value larger than a quarter of the capacity is not kept).
    pub fn insert(
        &self,
        key: &str,
        version: u64,
        sealed: &[u8],
        plain: SecretBytes,
    ) -> Arc<Opened> {
        let st = stamp(sealed);
        let opened = Arc::new(Opened {
            version,
            stamp: st.unwrap_or([0; STAMP]),
            base64: plain.to_base64(),
            plain,
            at: Instant::now(),
        });
        let size = opened.bytes();
        if self.capacity == 0 || size > self.capacity / 4 || st.is_none() {
            return opened;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
        if entries.bytes + size > self.capacity {
            entries.sweep(Instant::now());
            if entries.bytes + size > self.capacity {
                entries.map.clear();
                entries.bytes = 0;
            }
        }
        entries.bytes += size;
        entries.map.insert(key.to_owned(), opened.clone());
        opened
    }

    /// Drops `key`'s entry: its secret was written or deleted.
    pub fn forget(&self, key: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Entries and bytes held, for tests and metrics.
    pub fn held(&self) -> (usize, usize) {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        (entries.map.len(), entries.bytes)
    }

    /// Drops expired entries every `TTL / 6` (a value is freed within 35 s), on the current
    /// runtime, for as long as the cache lives.
    pub fn sweep_every(self: &Arc<Self>) {
        if self.capacity == 0 {
            return;
        }
        let cache: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TTL / 6);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(c) = cache.upgrade() else { return };
                c.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if !entries.map.is_empty() {
            entries.sweep(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(nonce: u8, tag: u8, len: usize) -> Vec<u8> {
        let mut s = vec![nonce; 24];
        s.extend(std::iter::repeat_n(0xee, len));
        s.extend([tag; 16]);
        s
    }

    fn plain(b: &[u8]) -> SecretBytes {
        SecretBytes::new(b.to_vec())
    }

    #[test]
    fn an_entry_serves_only_the_seal_and_version_it_was_opened_from() {
        let c = ValueCache::new(1 << 20);
        let s1 = sealed(1, 1, 5);
        let e = c.insert("alice/k", 7, &s1, plain(b"hello"));
        assert_eq!(&*e.base64, "aGVsbG8=");
        let shown = format!("{e:?} {c:?}");
        assert!(
            !shown.contains("aGVsbG8") && !shown.contains("hello"),
            "{shown}"
        );
        let got = c.get("alice/k", 7, &s1).expect("a hit");
        assert_eq!(got.plain.expose(), b"hello");
        assert!(c.get("alice/k", 8, &s1).is_none(), "another version");
        assert!(
            c.get("alice/k", 7, &sealed(2, 1, 5)).is_none(),
            "another nonce"
        );
        assert!(
            c.get("alice/k", 7, &sealed(1, 2, 5)).is_none(),
            "another tag"
        );
        assert!(c.get("bob/k", 7, &s1).is_none(), "another key");
        assert!(
            c.get("alice/k", 7, &s1[..30]).is_none(),
            "too short to stamp"
        );
        c.forget("alice/k");
        assert!(c.get("alice/k", 7, &s1).is_none(), "forgotten");
        assert_eq!(c.held(), (0, 0));
    }

    #[test]
    fn the_capacity_bounds_what_is_held_and_zero_keeps_nothing() {
        let off = ValueCache::new(0);
        off.insert("a/k", 1, &sealed(1, 1, 3), plain(b"abc"));
        assert_eq!(off.held(), (0, 0));
        assert!(off.get("a/k", 1, &sealed(1, 1, 3)).is_none());

        // 3 + 4 bytes an entry; room for 4 of them.
        let c = ValueCache::new(28);
        for i in 0..4u8 {
            c.insert(&format!("a/k{i}"), 1, &sealed(i, 0, 3), plain(b"abc"));
        }
        assert_eq!(c.held(), (4, 28));
        c.insert("a/k9", 1, &sealed(9, 0, 3), plain(b"abc"));
        assert_eq!(c.held(), (1, 7), "nothing expired: everything else went");
        // Replacing an entry counts its bytes once.
        c.insert("a/k9", 2, &sealed(9, 1, 3), plain(b"abc"));
        assert_eq!(c.held(), (1, 7));
        // A value larger than a quarter of the cache is opened, not kept.
        let big = c.insert("a/big", 1, &sealed(5, 5, 8), plain(b"12345678"));
        assert_eq!(big.plain.len(), 8);
        assert_eq!(c.held(), (1, 7));
    }

    #[test]
    fn expired_entries_are_not_served_and_are_swept() {
        let c = ValueCache::new(1 << 20);
        let s = sealed(1, 1, 3);
        c.insert("a/k", 1, &s, plain(b"abc"));
        c.sweep(Instant::now());
        assert_eq!(c.held().0, 1, "fresh");
        c.sweep(Instant::now() + TTL);
        assert_eq!(c.held(), (0, 0), "expired and swept");
        assert!(c.get("a/k", 1, &s).is_none());
    }
}
