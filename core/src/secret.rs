//! Secret values and tokens: unprintable by construction, wiped on drop.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes. `Debug` prints `****`; there is no `Display`; the bytes are reached only
/// through [`SecretBytes::expose`]. The buffer is zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes standard base64, the encoding values travel in.
    pub fn from_base64(s: &str) -> Result<Self, base64::DecodeError> {
        use base64::Engine as _;
        let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 4 * 3 + 3));
        base64::engine::general_purpose::STANDARD.decode_vec(s, &mut out)?;
        Ok(Self(out))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        use base64::Engine as _;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.expose()))
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(****, {} bytes)", self.0.len())
    }
}

impl serde::Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Self::from_base64(&s).map_err(|_| serde::de::Error::custom("value is not valid base64"))
    }
}

/// A bearer token. Same hygiene as [`SecretBytes`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl Token {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_values() {
        let v = SecretBytes::new(b"p@$$w0rd123".to_vec());
        assert_eq!(format!("{v:?}"), "SecretBytes(****, 11 bytes)");
        let t = Token::new("tok-abc".into());
        assert_eq!(format!("{t:?}"), "Token(****)");
    }

    #[test]
    fn base64_round_trip() {
        let v = SecretBytes::new((0..=255u8).collect());
        let json = serde_json::to_string(&v).unwrap();
        let back: SecretBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose(), v.expose());
        assert!(serde_json::from_str::<SecretBytes>("\"***\"").is_err());
    }
}
