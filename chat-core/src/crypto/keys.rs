//! The three kinds of keys, and what each does to the level below it.

use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{
    CryptoError, KeyId,
    envelope::{
        self, Aad, Associated, CHECK_PLAINTEXT, DataKeyScope, KeyCheck, Kind, Parsed,
        WrappedDataKey, WrappedUserKey,
    },
    into_text,
};
use crate::model::UserId;

/// The length of every key: 256 bits.
pub const KEY_LEN: usize = 32;

/// HKDF `info` strings (see the module docs).
const MASTER_WRAP_INFO: &[u8] = b"chat-engine master-key wrap v1";
const MASTER_CHECK_INFO: &[u8] = b"chat-engine master-key check v1";
const MASTER_ID_INFO: &[u8] = b"chat-engine master-key id v1";
const USER_WRAP_INFO: &[u8] = b"chat-engine user-key wrap v1";
const USER_ID_INFO: &[u8] = b"chat-engine user-key id v1";

/// The length of a master key in standard base64 with padding.
const MASTER_KEY_BASE64_LEN: usize = 44;

/// 32 secret bytes in one heap allocation, wiped when dropped.
///
/// Boxed so that moving a key (into a cache, out of a function) moves a
/// pointer and leaves no copy of the bytes behind to outlive the wipe.
struct Secret(Box<[u8; KEY_LEN]>);

impl Secret {
    fn zeroed() -> Self {
        Self(Box::new([0; KEY_LEN]))
    }

    /// Fresh bytes from the operating system's generator.
    fn random() -> Result<Self, CryptoError> {
        let mut secret = Self::zeroed();
        getrandom::fill(&mut secret.0[..]).map_err(CryptoError::Random)?;
        Ok(secret)
    }

    /// A copy of `bytes`, which must be [`KEY_LEN`] long; `what` names the
    /// key in the error.
    fn from_slice(bytes: &[u8], what: &str) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey(format!(
                "a {what} is {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let mut secret = Self::zeroed();
        secret.0.copy_from_slice(bytes);
        Ok(secret)
    }

    /// A key derived from `prk` with HKDF-Expand under `info`.
    fn derive(prk: &Hkdf<Sha256>, info: &[u8]) -> Result<Self, CryptoError> {
        let mut secret = Self::zeroed();
        prk.expand(info, &mut secret.0[..])
            .map_err(|_| CryptoError::Derive)?;
        Ok(secret)
    }

    /// HKDF-Extract with these bytes as the input keying material, no salt.
    fn extract(&self) -> Hkdf<Sha256> {
        Hkdf::<Sha256>::new(None, &self.0[..])
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An AES-256-GCM instance keyed with these bytes. Made per use and
    /// dropped after it (its round keys are wiped then, with `aes`'s
    /// `zeroize` feature): expanding the key costs well under a
    /// microsecond, and keeps one copy of the key in memory, not two.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }

    /// Overwrites the bytes with zeros.
    fn wipe(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl ZeroizeOnDrop for Secret {}

/// A [`KeyId`] derived from `prk` with HKDF-Expand under `info`.
fn derive_id(prk: &Hkdf<Sha256>, info: &[u8]) -> Result<KeyId, CryptoError> {
    let mut id = [0u8; 8];
    prk.expand(info, &mut id).map_err(|_| CryptoError::Derive)?;
    Ok(KeyId(id))
}

/// A key-encryption key: an HKDF-derived AES key, and the id of the key
/// it was derived from, which every record it seals names in its header.
struct Wrapper {
    key: Secret,
    id: KeyId,
}

impl Wrapper {
    fn derive(prk: &Hkdf<Sha256>, info: &[u8], id: KeyId) -> Result<Self, CryptoError> {
        Ok(Self {
            key: Secret::derive(prk, info)?,
            id,
        })
    }

    fn seal(&self, aad: &Associated, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        envelope::seal(&self.key.cipher(), aad, plaintext)
    }

    /// Opens a record whose header names the key `found`: a
    /// [`CryptoError::KeyMismatch`] if that is another key (decrypting
    /// would fail anyway; this says why).
    fn open(
        &self,
        aad: &Associated,
        found: KeyId,
        record: Result<Parsed<'_>, CryptoError>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if found != self.id {
            return Err(CryptoError::KeyMismatch {
                expected: self.id,
                found,
            });
        }
        envelope::open(&self.key.cipher(), aad, &record?)
    }
}

// --- master key --------------------------------------------------------------

/// The root of the hierarchy: wraps every [`UserKey`]. Comes from
/// configuration (`CHAT_MASTER_KEY`, a key file) and is never stored by the
/// engine.
///
/// Only HKDF-derived keys touch data (see the module docs): one wraps user
/// keys, one seals the [`KeyCheck`]; a third derivation is its public
/// [`KeyId`].
pub struct MasterKey {
    raw: Secret,
    wrap: Wrapper,
    check: Wrapper,
}

// Every secret field wipes itself when dropped.
impl ZeroizeOnDrop for MasterKey {}

impl MasterKey {
    /// A new random master key (a `--dev` server's, or one to write to a
    /// key file with [`MasterKey::to_base64`]).
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_secret(Secret::random()?)
    }

    /// A master key from its 32 bytes. The caller wipes its own copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Self::from_secret(Secret::from_slice(bytes, "master key")?)
    }

    /// A master key from its standard base64 form (44 characters with `=`
    /// padding, for 32 bytes), as `CHAT_MASTER_KEY` or a key file holds
    /// it. Surrounding ASCII whitespace (a file's final newline) is
    /// ignored. Errors say what is wrong without quoting the input.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.len() != MASTER_KEY_BASE64_LEN {
            return Err(CryptoError::InvalidKey(format!(
                "a master key is {KEY_LEN} bytes in standard base64: \
                 {MASTER_KEY_BASE64_LEN} characters, got {}",
                text.chars().count()
            )));
        }
        let mut buf = Zeroizing::new([0u8; 48]);
        let len = BASE64
            .decode_slice(text, &mut buf[..])
            .map_err(|_| base64_error(text))?;
        Self::from_bytes(&buf[..len])
    }

    /// The key in the form [`MasterKey::from_base64`] reads, to write to a
    /// key file (mode 0600). The string is the secret itself.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.raw.bytes()))
    }

    /// The key's public fingerprint, to name it in logs and errors.
    pub fn id(&self) -> KeyId {
        self.wrap.id
    }

    /// Wraps `key` as `user`'s: it unwraps with this master key and this
    /// user only.
    pub fn wrap_user_key(
        &self,
        user: &UserId,
        key: &UserKey,
    ) -> Result<WrappedUserKey, CryptoError> {
        let aad = envelope::user_key_associated(self.id(), user);
        let bytes = self.wrap.seal(&aad, key.raw.bytes())?;
        Ok(WrappedUserKey::sealed(bytes, self.id()))
    }

    /// Unwraps `user`'s key.
    ///
    /// [`CryptoError::KeyMismatch`] if another master key wrapped it (its
    /// header says which); [`CryptoError::Decrypt`] if it was altered or
    /// belongs to another user.
    pub fn unwrap_user_key(
        &self,
        user: &UserId,
        wrapped: &WrappedUserKey,
    ) -> Result<UserKey, CryptoError> {
        let aad = envelope::user_key_associated(self.id(), user);
        let plain = self.wrap.open(&aad, wrapped.key_id(), wrapped.parsed())?;
        UserKey::from_secret(Secret::from_slice(&plain, "user key")?)
    }

    /// A fresh check record, for the key store to keep (see [`KeyCheck`]).
    pub fn seal_check(&self) -> Result<KeyCheck, CryptoError> {
        let aad = envelope::check_associated(self.id());
        let bytes = self.check.seal(&aad, CHECK_PLAINTEXT)?;
        Ok(KeyCheck::sealed(bytes, self.id()))
    }

    /// Whether `check` was sealed by this master key: `Ok` if so;
    /// [`CryptoError::KeyMismatch`] naming both keys if another key sealed
    /// it; [`CryptoError::Decrypt`] if it was altered.
    pub fn verify_check(&self, check: &KeyCheck) -> Result<(), CryptoError> {
        let aad = envelope::check_associated(self.id());
        let plain = self.check.open(&aad, check.key_id(), check.parsed())?;
        if plain.as_slice() == CHECK_PLAINTEXT {
            Ok(())
        } else {
            Err(CryptoError::Decrypt)
        }
    }

    fn from_secret(raw: Secret) -> Result<Self, CryptoError> {
        let prk = raw.extract();
        let id = derive_id(&prk, MASTER_ID_INFO)?;
        Ok(Self {
            wrap: Wrapper::derive(&prk, MASTER_WRAP_INFO, id)?,
            check: Wrapper::derive(&prk, MASTER_CHECK_INFO, id)?,
            raw,
        })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Says what is wrong with a would-be base64 master key without quoting
/// it (base64's own errors name the offending character).
fn base64_error(text: &str) -> CryptoError {
    let why = if text.contains(['-', '_']) {
        "it looks like URL-safe base64; use the standard alphabet (+ and /)"
    } else {
        "it is not standard base64 (A-Z, a-z, 0-9, + and /, with = padding)"
    };
    CryptoError::InvalidKey(format!("master key: {why}"))
}

// --- user key ----------------------------------------------------------------

/// One user's key-encryption key: wraps the [`DataKey`]s of everything the
/// user sends. Stored only wrapped by the [`MasterKey`], in the key store;
/// deleting it there makes all the user's content unreadable
/// (crypto-shredding).
pub struct UserKey {
    raw: Secret,
    wrap: Wrapper,
}

// Every secret field wipes itself when dropped.
impl ZeroizeOnDrop for UserKey {}

impl UserKey {
    /// A new random user key.
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_secret(Secret::random()?)
    }

    /// A user key from its 32 bytes (tests, known answers). The caller
    /// wipes its own copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Self::from_secret(Secret::from_slice(bytes, "user key")?)
    }

    /// The key's public fingerprint, which every data key it wraps names.
    pub fn id(&self) -> KeyId {
        self.wrap.id
    }

    /// Wraps `key` for `scope`: it unwraps with this user key and this
    /// scope (chat, sender, epoch) only. `scope.sender` should be this
    /// key's user.
    pub fn wrap_data_key(
        &self,
        scope: &DataKeyScope,
        key: &DataKey,
    ) -> Result<WrappedDataKey, CryptoError> {
        let aad = scope.associated(self.id());
        let bytes = self.wrap.seal(&aad, key.raw.bytes())?;
        Ok(WrappedDataKey::sealed(bytes, self.id()))
    }

    /// Unwraps the data key of `scope`.
    ///
    /// [`CryptoError::KeyMismatch`] if another user key wrapped it (the
    /// user's key was shredded, and perhaps made anew);
    /// [`CryptoError::Decrypt`] if it was altered or belongs to another
    /// scope.
    pub fn unwrap_data_key(
        &self,
        scope: &DataKeyScope,
        wrapped: &WrappedDataKey,
    ) -> Result<DataKey, CryptoError> {
        let aad = scope.associated(self.id());
        let plain = self.wrap.open(&aad, wrapped.key_id(), wrapped.parsed())?;
        DataKey::from_bytes(&plain)
    }

    fn from_secret(raw: Secret) -> Result<Self, CryptoError> {
        let prk = raw.extract();
        let id = derive_id(&prk, USER_ID_INFO)?;
        Ok(Self {
            wrap: Wrapper::derive(&prk, USER_WRAP_INFO, id)?,
            raw,
        })
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

// --- data key ----------------------------------------------------------------

/// The key that seals content: one per chat, per sender, per epoch (a
/// [`DataKeyScope`]). Used directly as the AES-256-GCM key (see the module
/// docs for why there are no per-purpose subkeys); stored only wrapped by
/// the sender's [`UserKey`].
pub struct DataKey {
    raw: Secret,
}

// The secret wipes itself when dropped.
impl ZeroizeOnDrop for DataKey {}

impl DataKey {
    /// A new random data key, for a new epoch.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self {
            raw: Secret::random()?,
        })
    }

    /// A data key from its 32 bytes (tests, known answers). The caller
    /// wipes its own copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self {
            raw: Secret::from_slice(bytes, "data key")?,
        })
    }

    /// Seals `plaintext` under a fresh random nonce; the result opens only
    /// with this key and the same `aad`. Its header carries `aad`'s epoch
    /// ([`sealed_epoch`](super::sealed_epoch)).
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        envelope::seal(&self.raw.cipher(), &aad.associated(), plaintext)
    }

    /// Opens what [`DataKey::seal`] sealed with the same `aad`.
    ///
    /// [`CryptoError::Decrypt`] for the wrong key, altered bytes, or any
    /// difference in `aad` (content moved to another message, chat, sender,
    /// epoch or purpose); [`CryptoError::Format`] for bytes that are not
    /// sealed content. Never panics on any input.
    pub fn open(&self, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let record = envelope::parse(sealed, Kind::Sealed)?;
        envelope::open(&self.raw.cipher(), &aad.associated(), &record)
    }

    /// [`DataKey::open`] for text (a message body): also
    /// [`CryptoError::NotUtf8`] if the content is not UTF-8.
    pub fn open_text(&self, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        into_text(self.open(aad, sealed)?)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").finish_non_exhaustive()
    }
}

impl DataKey {
    /// The key ready to open many contents in a row (a page of history):
    /// its AES key schedule expanded once, not per content. Wiped when
    /// dropped, like the key; keep it no longer than the page.
    pub fn opener(&self) -> DataKeyOpener {
        DataKeyOpener {
            cipher: self.raw.cipher(),
        }
    }
}

/// A [`DataKey`] expanded for opening, from [`DataKey::opener`].
pub struct DataKeyOpener {
    // With `aes`'s `zeroize` feature, the round keys are wiped on drop.
    cipher: Aes256Gcm,
}

impl DataKeyOpener {
    /// [`DataKey::open_text`].
    pub fn open_text(&self, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        let record = envelope::parse(sealed, Kind::Sealed)?;
        into_text(envelope::open(&self.cipher, &aad.associated(), &record)?)
    }
}

impl fmt::Debug for DataKeyOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyOpener").finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(super) mod testing {
    //! What the tests of the parent module need to see: raw bytes, and
    //! sealing under a chosen nonce for known answers.

    use super::{
        DataKey, DataKeyScope, KEY_LEN, MasterKey, Secret, UserKey, WrappedDataKey, WrappedUserKey,
        envelope,
    };
    use crate::{
        crypto::{Aad, CryptoError},
        model::UserId,
    };

    type Nonce = [u8; envelope::NONCE_LEN];

    /// A secret's bytes after `wipe`, which is what `Drop` runs.
    pub(in crate::crypto) fn wiped_secret() -> [u8; KEY_LEN] {
        let mut secret = Secret(Box::new([0xa5; KEY_LEN]));
        secret.wipe();
        *secret.bytes()
    }

    pub(in crate::crypto) fn user_key_bytes(key: &UserKey) -> [u8; KEY_LEN] {
        *key.raw.bytes()
    }

    pub(in crate::crypto) fn data_key_bytes(key: &DataKey) -> [u8; KEY_LEN] {
        *key.raw.bytes()
    }

    /// [`DataKey::seal`] under `nonce`.
    pub(in crate::crypto) fn seal_with_nonce(
        key: &DataKey,
        aad: &Aad,
        nonce: &Nonce,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        envelope::seal_with_nonce(&key.raw.cipher(), &aad.associated(), nonce, plaintext)
    }

    /// [`MasterKey::wrap_user_key`] under `nonce`.
    pub(in crate::crypto) fn wrap_user_key_with_nonce(
        master: &MasterKey,
        user: &UserId,
        key: &UserKey,
        nonce: &Nonce,
    ) -> Result<WrappedUserKey, CryptoError> {
        let aad = envelope::user_key_associated(master.id(), user);
        let bytes =
            envelope::seal_with_nonce(&master.wrap.key.cipher(), &aad, nonce, key.raw.bytes())?;
        WrappedUserKey::from_bytes(bytes)
    }

    /// [`UserKey::wrap_data_key`] under `nonce`.
    pub(in crate::crypto) fn wrap_data_key_with_nonce(
        user_key: &UserKey,
        scope: &DataKeyScope,
        key: &DataKey,
        nonce: &Nonce,
    ) -> Result<WrappedDataKey, CryptoError> {
        let aad = scope.associated(user_key.id());
        let bytes =
            envelope::seal_with_nonce(&user_key.wrap.key.cipher(), &aad, nonce, key.raw.bytes())?;
        WrappedDataKey::from_bytes(bytes)
    }
}
